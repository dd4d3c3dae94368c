"""Three real `layer-router serve` processes, edge -> regional -> central (the demo's sites, no
fault proxies, spools at the edge and regional uploading to central's collector), and central
pulled away with `kill -9` while the others run: upstream-only requests get a fast 503 offline
through the chain, local and regional answers go on, audit copies pile up in both spools, and
when central returns they drain at once; every tier's audit log verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import router
from router.demo.topology import TIERS, Ports, build_repositories, url, write_configs

ROUTER_ROOT = Path(router.__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0
HTTP_TIMEOUT_S = 20.0
HOTSPOT = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32"}]}
HOTSPOT["inputs"][0]["data"] = [30.0] * 64


class Sites:
    """The three tiers' processes, ports and folders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = Ports.from_base(0)
        build_repositories(root)
        links = {
            "edge->regional": url(self.ports.regional),
            "edge->central": url(self.ports.central),
            "regional->central": url(self.ports.central),
        }
        self.configs = write_configs(root, self.ports, links)
        for tier in ("edge", "regional"):  # audit copies go to central's collector
            doc = yaml.safe_load(self.configs[tier].read_text())
            doc["spool"] = {"collector_url": url(self.ports.central), "path": "state/spool.db"}
            self.configs[tier].write_text(yaml.safe_dump(doc))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, tier: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROUTER_ROOT), env.get("PYTHONPATH")]))
        env["LAYER_ROUTER_STATE_DIR"] = str(self.root / tier / "state")
        with (self.root / f"{tier}.log").open("ab") as log:
            self.processes[tier] = subprocess.Popen(
                [sys.executable, "-m", "router", "serve", "--config", str(self.configs[tier])],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        ready = eventually(lambda: call(self.url(tier) + "/v2/health/ready")[0] == 200 or None)
        assert ready, (self.root / f"{tier}.log").read_text()[-2000:]

    def url(self, tier: str) -> str:
        return url(self.ports.of(tier))

    def admin(self, tier: str) -> str:
        return url(self.ports.admin[tier])

    def spool_pending(self, tier: str) -> int:
        _, _, status = call(self.admin(tier) + "/status")
        return int(status["spool"]["pending"])

    def connectivity(self, tier: str) -> dict[str, str]:
        _, _, doc = call(self.url(tier) + "/v2")
        return dict(doc["connectivity"])

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    started = Sites(tmp_path)
    try:
        for tier in reversed(TIERS):  # from the far end: each tier discovers the next
            started.start(tier)
        yield started
    finally:
        started.stop()


def call(address: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(address, data=data)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")
    except OSError:
        return 0, {}, None


def rgb(*values: float) -> dict[str, Any]:
    return {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": list(values)}]}


def eventually(check: Callable[[], Any], timeout_s: float = START_TIMEOUT_S) -> Any:
    """Ask until `check` returns something other than None (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    while (result := check()) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return result


def test_central_killed_and_back(sites: Sites) -> None:
    """kill -9 central: a v2 request only central can answer gets 503 offline at once through
    regional (no wait on its Retry-After), local and regional models answer, both spools
    keep their audit copies; central back, they drain within seconds; logs verify."""
    edge = sites.url("edge")
    large = edge + "/v2/models/color_classifier_large/infer"
    status, headers, _ = call(large, rgb(0.2, 0.3, 0.9))
    assert (status, headers["X-Served-By-Tier"]) == (200, "central")

    sites.processes["central"].kill()
    sites.processes["central"].wait()
    offline = {"regional": "online", "central": "offline"}
    assert eventually(lambda: sites.connectivity("edge") == offline or None, 15)
    assert eventually(lambda: sites.connectivity("regional") == {"central": "offline"} or None, 15)

    started = time.monotonic()
    status, headers, _ = call(large, rgb(0.9, 0.3, 0.2))
    took_s = time.monotonic() - started
    assert status == 503
    assert headers["X-Route-Reason"].endswith(">unhealthy:central,offline")
    assert took_s < 3.0  # regional says Retry-After: 5; waiting on it would take 10 s
    status, headers, _ = call(edge + "/v2/models/color_classifier/versions/1/infer", rgb(1, 1, 1))
    assert (status, headers["X-Route-Reason"]) == (200, "local")
    status, headers, _ = call(edge + "/v2/models/hotspot_detector/infer", HOTSPOT)
    assert (status, headers["X-Served-By-Tier"]) == (200, "regional")
    assert sites.spool_pending("edge") > 0
    assert sites.spool_pending("regional") > 0

    sites.start("central")
    drained = eventually(
        lambda: sites.spool_pending("edge") + sites.spool_pending("regional") == 0 or None, 20
    )
    assert drained, (sites.spool_pending("edge"), sites.spool_pending("regional"))
    for tier in TIERS:
        verify = subprocess.run(
            [
                sys.executable,
                "-m",
                "router",
                "audit",
                "verify",
                str(sites.root / tier / "state" / "audit"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROUTER_ROOT)},
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
