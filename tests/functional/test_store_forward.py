"""Store-and-forward end to end: an edge site spools audit copies and desensitized samples and
its drainer delivers them to a central layer-router's collector; nothing raw reaches the spool
or the collector, and the spool's counters balance."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from router.api.state import SPOOL
from router.app import build_app
from router.errors import ConfigError
from router.resources import default_policy_bundle, state_dir
from router.settings import Settings
from router.spool.collector import CollectorStore
from router.testing import FakeUpstream, FaultProxy, serving

EDGE_MODELS = Path(__file__).resolve().parents[2] / "edge_models"
CANARY = "spool.canary.51ab@example.com"


@pytest.fixture
async def sites(tmp_path: Path) -> AsyncIterator[tuple[str, TestServer, TestServer]]:
    """An edge sampling every answer, with a spool in tmp_path, and a central collector."""
    async with running_sites(tmp_path) as started:
        yield started


@contextlib.asynccontextmanager
async def running_sites(
    tmp_path: Path, **routing: Any
) -> AsyncIterator[tuple[str, TestServer, TestServer]]:
    """The edge (base URL and server) and the central collector; `routing` for the edge."""
    bundle = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), bundle)
    (bundle / "sampling.yaml").write_text("default: 1.0\n", encoding="utf-8")
    central = TestServer(
        build_app(
            Settings.model_validate(
                {
                    "site": {"id": "hq", "tier": "central"},
                    "models": {"repository": EDGE_MODELS, "inference_threads": 1},
                }
            )
        ),
        host="127.0.0.1",
    )
    await central.start_server()
    central_url = str(central.make_url("")).rstrip("/")
    edge = TestServer(
        build_app(
            Settings.model_validate(
                {
                    "site": {"id": "ship-1"},
                    "models": {"repository": EDGE_MODELS, "inference_threads": 1},
                    "policy": {"bundle": bundle},
                    "cache": {"enabled": False},
                    "routing": routing,
                    "spool": {"path": tmp_path / "spool.sqlite3", "collector_url": central_url},
                    "upstreams": [
                        {
                            "name": "central",
                            "tier": "central",
                            "models": ["color_classifier"],
                            "endpoints": [{"url": central_url}],
                            "health_check": {"enabled": False},
                        }
                    ],
                }
            )
        ),
        host="127.0.0.1",
    )
    await edge.start_server()
    try:
        yield str(edge.make_url("")).rstrip("/"), edge, central
    finally:
        await edge.close()
        await central.close()


class TestStoreAndForward:
    async def test_samples_and_audit_copies_reach_the_collector(
        self, sites: tuple[str, TestServer, TestServer]
    ) -> None:
        """Ten answers: ten audit copies and ten samples delivered, counters balanced, and the
        canary sent in a request is in neither the spool nor the collector's store."""
        base, edge, central = sites
        body = {
            "id": CANARY,  # a free-form field the local model ignores, but detection sees
            "inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [0, 1, 0]}],
        }
        async with aiohttp.ClientSession() as http:
            for _ in range(10):
                async with (
                    asyncio.timeout(10),
                    http.post(base + "/v2/models/color_classifier/infer", json=body) as response,
                ):
                    assert response.status == 200
        spool = edge.app[SPOOL].spool
        assert spool is not None
        deadline = time.monotonic() + 15
        while True:
            counts = await spool.counts()
            if counts.produced >= 20 and counts.delivered == counts.produced:
                break
            assert time.monotonic() < deadline, counts
            await asyncio.sleep(0.1)
        assert counts.balanced
        spool_file = Path(spool.path) if hasattr(spool, "path") else None
        await edge.close()
        await central.close()
        for file in [
            *state_dir().glob("collector-hq*.sqlite3*"),
            *([spool_file] if spool_file else []),
        ]:
            assert CANARY.encode() not in file.read_bytes(), file


async def test_samples_of_requests_sharing_an_x_request_id_are_all_kept(tmp_path: Path) -> None:
    """With the audit trail off, two requests that carry the same (client-chosen) X-Request-Id
    are two samples: a sample's idempotency key is never the client's id, which other
    requests and other sites may share and the collector would de-duplicate away."""
    bundle = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), bundle)
    (bundle / "sampling.yaml").write_text("default: 1.0\n", encoding="utf-8")
    settings = Settings.model_validate(
        {
            "site": {"id": "ship-2"},
            "models": {"repository": EDGE_MODELS, "inference_threads": 1},
            "policy": {"bundle": bundle},
            "cache": {"enabled": False},
            "audit": {"enabled": False},
            "spool": {"path": tmp_path / "spool.sqlite3"},
            # A tier the samples are desensitized for (nothing is sent there).
            "upstreams": [
                {
                    "name": "central",
                    "tier": "central",
                    "models": ["color_classifier"],
                    "endpoints": [{"url": "http://127.0.0.1:9"}],
                    "health_check": {"enabled": False},
                }
            ],
        }
    )
    edge = TestServer(build_app(settings), host="127.0.0.1")
    await edge.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            for red in (0.1, 0.9):
                body = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32",
                                    "data": [red, 1, 0]}]}  # fmt: skip
                async with (
                    asyncio.timeout(10),
                    http.post(
                        str(edge.make_url("/v2/models/color_classifier/infer")),
                        json=body,
                        headers={"X-Request-Id": "client-order-17"},
                    ) as response,
                ):
                    assert response.status == 200
        spool = edge.app[SPOOL].spool
        assert spool is not None
        for _ in range(200):  # samples are spooled after the answer went out
            if (await spool.counts()).produced >= 2:
                break
            await asyncio.sleep(0.05)
        assert (await spool.counts()).produced == 2
    finally:
        await edge.close()


async def test_a_site_forced_offline_keeps_its_records(tmp_path: Path) -> None:
    """`serve --offline` (routing.offline): answers are spooled but nothing is uploaded, even
    with the collector reachable; the records wait for the site to go back online."""
    async with running_sites(tmp_path, offline=True) as (base, edge, _):
        body = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [0, 1, 0]}]}
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                url = base + "/v2/models/color_classifier/infer"
                async with asyncio.timeout(10), http.post(url, json=body) as response:
                    assert response.status == 200
        spool = edge.app[SPOOL].spool
        assert spool is not None
        await asyncio.sleep(1.5)  # an online drainer uploads within its first idle step
        counts = await spool.counts()
        assert counts.produced >= 6
        assert (counts.delivered, counts.pending) == (0, counts.produced)


async def test_a_collector_store_that_cannot_be_opened_stops_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A central site whose collector store is from a later release (or damaged) stops with
    an error naming it, instead of starting an empty store beside it that has forgotten
    every key it de-duplicated; a store held by another process is still passed over."""
    monkeypatch.setenv("LAYER_ROUTER_STATE_DIR", str(tmp_path))
    store = tmp_path / "collector-hq.sqlite3"
    CollectorStore.open_sync(store).close_sync()
    raw = sqlite3.connect(store)
    raw.execute("PRAGMA user_version = 9")
    raw.commit()
    raw.close()
    settings = Settings.model_validate({"site": {"id": "hq", "tier": "central"}})
    server = TestServer(build_app(settings), host="127.0.0.1")
    with pytest.raises(ConfigError, match=r"collector-hq\.sqlite3") as info:
        await server.start_server()
    await server.close()
    assert "newer" in str(info.value)
    assert [name for name in os.listdir(tmp_path) if "collector" in name] == [store.name]


async def test_a_spool_without_a_collector_says_its_copies_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`spool.path` with no `collector_url`: copies are kept for a collector a restart
    configures, up to the spool's bounds, and the start-up log says so once."""
    settings = Settings.model_validate(
        {
            "site": {"id": "ship-3"},
            "models": {"repository": EDGE_MODELS, "inference_threads": 1},
            "spool": {"path": tmp_path / "spool.sqlite3"},
        }
    )
    edge = TestServer(build_app(settings), host="127.0.0.1")
    with caplog.at_level("WARNING", logger="router.stores"):
        await edge.start_server()
    try:
        warned = [r for r in caplog.records if "collector_url is not" in r.getMessage()]
        assert len(warned) == 1
    finally:
        await edge.close()


async def test_uploads_wait_for_the_collectors_own_tier(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The central tier, which is the collector too, is cut while the regional tier stays up:
    the drainer makes no upload attempt (no failure, no backoff growing through the outage)
    until central is checked up again, and then delivers at once."""
    central = TestServer(
        build_app(
            Settings.model_validate(
                {
                    "site": {"id": "hq", "tier": "central"},
                    "models": {"repository": EDGE_MODELS, "inference_threads": 1},
                }
            )
        ),
        host="127.0.0.1",
    )
    await central.start_server()
    regional = FakeUpstream(name="regional", models=("gpt-test",))
    checks = {"enabled": True, "interval_s": 0.1, "timeout_s": 0.2}
    async with (
        FaultProxy("127.0.0.1", central.port or 0) as link,
        serving(regional.app()) as regional_url,
    ):
        edge = TestServer(
            build_app(
                Settings.model_validate(
                    {
                        "site": {"id": "ship-3"},
                        "models": {"repository": EDGE_MODELS, "inference_threads": 1},
                        "cache": {"enabled": False},
                        "spool": {"path": tmp_path / "spool.sqlite3", "collector_url": link.url},
                        "upstreams": [
                            {
                                "name": "regional",
                                "tier": "regional",
                                "endpoints": [{"url": regional_url}],
                                "health_check": checks,
                            },
                            {
                                "name": "central",
                                "tier": "central",
                                "endpoints": [{"url": link.url}],
                                "health_check": checks,
                            },
                        ],
                    }
                )
            ),
            host="127.0.0.1",
        )
        await edge.start_server()
        base = str(edge.make_url("")).rstrip("/")
        spool = edge.app[SPOOL].spool
        assert spool is not None
        try:
            link.faults.reset = True
            link.drop_connections()
            async with aiohttp.ClientSession() as http:
                for _ in range(100):
                    async with http.get(base + "/v2") as response:
                        connectivity = (await response.json())["connectivity"]
                    if connectivity == {"regional": "online", "central": "offline"}:
                        break
                    await asyncio.sleep(0.05)
                assert connectivity == {"regional": "online", "central": "offline"}
                body = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32",
                                    "data": [0, 1, 0]}]}  # fmt: skip
                url = base + "/v2/models/color_classifier/infer"
                async with asyncio.timeout(10), http.post(url, json=body) as response:
                    assert response.status == 200
            await asyncio.sleep(1.5)  # an online drainer tries within its first idle step
            assert "spool uploads failing" not in caplog.text
            assert (await spool.counts()).pending >= 1
            link.faults.reset = False
            deadline = time.monotonic() + 10
            while (counts := await spool.counts()).pending:
                assert time.monotonic() < deadline, counts
                await asyncio.sleep(0.1)
            assert counts.delivered == counts.produced
        finally:
            await edge.close()
            await central.close()
