"""Hot reload in a real `layer-router serve` process (TESTING.md R10): SIGHUP swaps config,
policy bundle and model repository with no failed request; settings that need a restart are
reported and ignored; SIGTERM under load lets in-flight requests finish within the drain
timeout and leaves every answered request's audit copy synced in the spool."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
from test_serve_process import SLOW_LAUNCHER, spawn, wait_ready

from router.resources import default_policy_bundle
from router.spool import Spool
from router.testing import identity_model, write_repository

SLOW_RUN_S = 0.2
ADMIN_URL = re.compile(r"/status\) on (http://[^\s,]+)")
CLIENTS = 6
RELOADS = 3
SLOW_BODY = orjson.dumps(
    {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
)


def site_folder(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A config, a policy bundle folder and a model repository that the tests then change."""
    bundle = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), bundle)
    repository = write_repository(
        tmp_path / "repo", {"slow": {1: identity_model("FP32")}}, {"slow": {"warmup": False}}
    )
    config = tmp_path / "site.yaml"
    config.write_text(
        "site: {id: reload-site}\n"
        "server: {drain_timeout_s: 20, readiness_grace_s: 0.5}\n"
        "models: {inference_threads: 2, max_queue_size: 1024}\n"
        "cache: {enabled: false}\n"
        "policy: {bundle: bundle}\n"
        "spool: {path: spool.sqlite3}\n"
    )
    return config, bundle, repository


def set_revision(bundle: Path, revision: str) -> None:
    manifest = bundle / "manifest.yaml"
    lines = manifest.read_text().splitlines()
    lines = [f'revision: "{revision}"' if ln.startswith("revision:") else ln for ln in lines]
    manifest.write_text("\n".join(lines) + "\n")


async def server_metadata(http: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with http.get(url + "/v2") as response:
        doc: dict[str, object] = await response.json()
        return doc


async def test_sighup_reloads_bundle_and_reports_restart_only_settings(tmp_path: Path) -> None:
    """SIGHUP activates the folder's new revision; a changed listener setting is named as
    needing a restart and the process keeps serving where it was; a broken config file fails
    the reload and changes nothing."""
    config, bundle, repository = site_folder(tmp_path)
    args = [sys.executable, "-m", "router", "serve", "--port", "0", "--config", config]
    args += ["--model-repository", repository]
    async with aiohttp.ClientSession() as http, spawn(*args, stderr=tmp_path / "err") as child:
        admin = ADMIN_URL.search(await child.read_until("admin (/metrics, /status) on"))
        assert admin is not None
        await wait_ready(http, child.url)
        set_revision(bundle, "sighup-2")
        child.process.send_signal(signal.SIGHUP)
        await child.read_until("reloaded: generation 2")
        doc = await server_metadata(http, child.url)
        assert doc["policy_revision"] == "sighup-2"
        # A bundle that fails to load is rejected, and the console says so, not just
        # "reloaded" (the old bundle stays).
        tenants = (bundle / "tenants.yaml").read_text()
        (bundle / "tenants.yaml").write_text("default: {data_class: nonesuch}\n")
        child.process.send_signal(signal.SIGHUP)
        line = await child.read_until("policy bundle rejected")
        assert "still revision sighup-2: tenants.yaml" in line
        assert (await server_metadata(http, child.url))["policy_revision"] == "sighup-2"
        (bundle / "tenants.yaml").write_text(tenants)
        config.write_text(
            config.read_text().replace("readiness_grace_s: 0.5", "readiness_grace_s: 3")
        )
        child.process.send_signal(signal.SIGHUP)
        line = await child.read_until("applies after a restart")
        assert "server.readiness_grace_s" in line
        async with http.get(admin.group(1) + "/status") as response:
            reload_state = (await response.json())["policy"]["reload"]
        assert reload_state["restart_required"] == ["server.readiness_grace_s"]
        config.write_text("server: [not, a, mapping]\n")
        child.process.send_signal(signal.SIGHUP)
        await child.read_until("reload failed")
        assert (await server_metadata(http, child.url))["policy_revision"] == "sighup-2"
        child.process.send_signal(signal.SIGTERM)
        assert await child.exit_code() == 0


async def test_reload_and_sigterm_under_load(tmp_path: Path) -> None:
    """R10: 0 failed requests across reloads of bundle and models; after SIGTERM every request
    in flight finishes within the drain timeout; the spool holds one audit copy per answer."""
    config, bundle, repository = site_folder(tmp_path)
    args = [sys.executable, "-c", SLOW_LAUNCHER, str(SLOW_RUN_S), "serve", "--port", "0"]
    args += ["--config", config, "--model-repository", repository]
    outcomes: Counter[str] = Counter()
    revisions: Counter[str] = Counter()
    in_flight_at_term: list[float] = []
    stopping = asyncio.Event()
    term_sent_at = 0.0
    # One connection per request: after the listener closes a new request is refused, never
    # half-sent on a pooled connection the server is closing.
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        spawn(*args, stderr=tmp_path / "err") as child,
    ):
        await wait_ready(http, child.url)

        async def client() -> None:
            while True:
                started = time.monotonic()
                try:
                    async with http.post(
                        child.url + "/v2/models/slow/infer", data=SLOW_BODY
                    ) as response:
                        await response.read()
                        outcomes[str(response.status)] += 1
                        revisions[response.headers.get("X-Policy-Revision", "")] += 1
                except aiohttp.ClientConnectorError:
                    assert stopping.is_set(), "refused while the router was serving"
                    return  # the listener is closed: the drain has begun
                if stopping.is_set() and started < term_sent_at:
                    in_flight_at_term.append(time.monotonic() - term_sent_at)

        async with asyncio.TaskGroup() as tasks:
            for _ in range(CLIENTS):
                tasks.create_task(client())
            await asyncio.sleep(0.5)
            for n in range(RELOADS):
                set_revision(bundle, f"load-{n}")
                (repository / "slow" / "config.yaml").touch()  # a changed repository: new models
                child.process.send_signal(signal.SIGHUP)
                await child.read_until(f"reloaded: generation {n + 2}")
                await asyncio.sleep(1.0)
            term_sent_at = time.monotonic()
            stopping.set()
            child.process.send_signal(signal.SIGTERM)
        assert await child.exit_code() == 0

    answered = outcomes["200"]
    assert set(outcomes) == {"200"}, outcomes  # 0 failed requests
    assert answered >= 4 * CLIENTS
    assert len(revisions) >= RELOADS  # requests were served across every swap
    assert in_flight_at_term  # some requests were running when SIGTERM came
    assert max(in_flight_at_term) < 20  # ...and finished within the drain timeout
    spool = await Spool.open(tmp_path / "spool.sqlite3")
    try:
        counts = await spool.counts()
    finally:
        await spool.close()
    assert counts.produced == answered  # every answered request's audit copy was synced
