"""A central router's collector reports what its retention bound removed, in /status and
/metrics (the store's bound itself: tests/unit/test_collector_retention.py)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import orjson

from router.settings import Settings
from router.spool.collector import COLLECTOR_PATH
from router.spool.wire import NDJSON
from router.testing import RouterThread


def wire(key: str, size: int) -> bytes:
    payload = base64.b64encode(b"z" * size).decode()
    return orjson.dumps({"key": key, "kind": "sample", "created": 1.0, "payload": payload})


def test_removals_show_in_status_and_metrics(edge_models: Path) -> None:
    """A central router's collector counts the records its byte bound removed, in /status
    (`collector.removed`) and /metrics (`collector_records_removed`)."""
    settings = Settings.model_validate(
        {
            "site": {"id": "hq", "tier": "central"},
            "models": {"repository": edge_models, "inference_threads": 1},
            "spool": {"collector_max_bytes": 1000},
        }
    )
    with RouterThread(settings, admin=True) as router, httpx.Client(timeout=10) as http:
        for n in range(5):
            answer = http.post(
                router.url + COLLECTOR_PATH,
                content=wire(f"k{n}", 300) + b"\n",
                headers={"Content-Type": NDJSON},
            )
            assert answer.status_code == 200, answer.text
        status = http.get(router.admin_url + "/status").json()["collector"]
        assert (status["stored"], status["removed"]) == (5, 2)
        metrics = http.get(router.admin_url + "/metrics").text
        assert "layer_router_collector_records_removed_total 2.0" in metrics


def test_records_past_the_retention_go_with_no_upload_after_them(edge_models: Path) -> None:
    """A central router removes records past collector_retention_s on its own, not only
    when a later batch arrives: its sites may never upload again."""
    settings = Settings.model_validate(
        {
            "site": {"id": "quiet-hq", "tier": "central"},
            "models": {"repository": edge_models, "inference_threads": 1},
            "spool": {"collector_retention_s": 0.5},
        }
    )
    with RouterThread(settings, admin=True) as router, httpx.Client(timeout=10) as http:
        lines = wire("k0", 10) + b"\n" + wire("k1", 10) + b"\n"
        answer = http.post(
            router.url + COLLECTOR_PATH, content=lines, headers={"Content-Type": NDJSON}
        )
        assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 5
        status = http.get(router.admin_url + "/status").json()["collector"]
        while status["removed"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            status = http.get(router.admin_url + "/status").json()["collector"]
        assert (status["stored"], status["removed"]) == (2, 2)
