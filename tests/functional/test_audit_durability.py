"""The audit trail under kill -9 (TESTING.md A1, D2): a `layer-router serve` process under steady
load (local answers, cache hits, forwarded answers, streams, errors) is killed with SIGKILL; every
X-Audit-Id a client received resolves to a record in the log, and the log, recovered by the next
start, verifies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

import router
from router.testing import FakeUpstream, serving

ROUTER_ROOT = Path(router.__file__).resolve().parents[1]
URL = re.compile(r"listening on (http://[^\s,]+)")
TIMEOUT_S = 60.0
CLIENTS = 8
ANSWERS_BEFORE_KILL = 400  # ~1% were lost before the fix: a handful per run
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}]}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROUTER_ROOT), env.get("PYTHONPATH")]))
    return env


@asynccontextmanager
async def serve(config: Path, stderr: Path) -> AsyncIterator[tuple[Process, str]]:
    """`layer-router serve` on a free port, once ready; yields the process and its URL;
    killed if the test leaves it running."""
    with stderr.open("ab") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router", "serve", "--config", str(config), "--port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=err, env=child_env(),
        )  # fmt: skip
        try:
            assert process.stdout is not None
            async with asyncio.timeout(TIMEOUT_S):
                while not (match := URL.search((await process.stdout.readline()).decode())):
                    assert process.returncode is None, f"serve exited: see {stderr}"
            await ready(match[1])
            yield process, match[1]
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def ready(url: str) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(TIMEOUT_S):
        while True:
            async with http.get(f"{url}/v2/health/ready") as response:
                if response.status == 200:
                    return
            await asyncio.sleep(0.05)


@dataclass
class Load:
    url: str
    received: set[str] = field(default_factory=set)  # audit ids a client holds
    answers: int = 0
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, index: int) -> None:
        """Requests back to back on one connection until the server is gone."""
        kinds = [self._local, self._local_repeated, self._chat, self._stream, self._missing]
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for n in range(100_000):
                try:
                    await kinds[(n + index) % len(kinds)](http, n * CLIENTS + index)
                except (aiohttp.ClientError, TimeoutError):
                    return  # killed
                self.answers += 1
                if self.answers >= ANSWERS_BEFORE_KILL:
                    self.enough.set()

    async def _post(self, http: aiohttp.ClientSession, path: str, doc: object) -> None:
        async with http.post(self.url + path, json=doc) as response:
            # Held from the moment the headers arrive, before the body is read.
            self.received.add(response.headers["X-Audit-Id"])
            await response.read()

    async def _local(self, http: aiohttp.ClientSession, n: int) -> None:
        data = [n % 256 / 255, 0.5, 0.25]
        doc = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": data}]}
        await self._post(http, "/v2/models/color_classifier/infer", doc)

    async def _local_repeated(self, http: aiohttp.ClientSession, n: int) -> None:
        doc = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, 0]}]}
        await self._post(http, "/v2/models/color_classifier/infer", doc)  # a cache hit

    async def _chat(self, http: aiohttp.ClientSession, n: int) -> None:
        await self._post(http, "/v1/chat/completions", CHAT)

    async def _missing(self, http: aiohttp.ClientSession, n: int) -> None:
        doc = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [1, 0]}]}
        await self._post(http, "/v2/models/no_such_model/infer", doc)  # a 404

    async def _stream(self, http: aiohttp.ClientSession, n: int) -> None:
        async with http.post(self.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            await r.read()
            # A stream's record is written at its end: a client holds it once it read the end.
            self.received.add(r.headers["X-Audit-Id"])


def logged_ids(log: Path) -> set[str]:
    """The ids of the whole entries in a log (a last line a kill tore is no entry)."""
    ids = set()
    for line in log.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            ids.add(orjson.loads(line)["id"])
    return ids


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *map(str, args)],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=child_env(), check=False,
    )  # fmt: skip


async def test_every_audit_id_a_client_holds_survives_kill_9(tmp_path: Path) -> None:
    """SIGKILL under load from 8 clients: every X-Audit-Id received before the kill is in the
    log, and after a restart (which recovers the chain) and a clean stop `audit verify` and
    `audit show` succeed."""
    fake = FakeUpstream(name="central", models=["gpt-test"])
    async with serving(fake.app()) as upstream_url:
        config = tmp_path / "site.yaml"
        config.write_text(
            "site: {id: killed}\n"
            "server: {readiness_grace_s: 0.1, drain_timeout_s: 5}\n"
            "audit: {path: audit, fsync: batch}\n"
            "upstreams:\n"
            "  - {name: central, tier: central, models: [gpt-test],\n"
            f"     endpoints: [{{url: '{upstream_url}'}}], health_check: {{enabled: false}}}}\n"
        )
        stderr = tmp_path / "stderr.log"
        async with serve(config, stderr) as (process, url):
            load = Load(url)
            async with asyncio.TaskGroup() as clients:
                for index in range(CLIENTS):
                    clients.create_task(load.client(index))
                async with asyncio.timeout(TIMEOUT_S):
                    await load.enough.wait()
                process.send_signal(signal.SIGKILL)  # mid-load: answers are on their way
                assert await process.wait() == -signal.SIGKILL
        log = tmp_path / "audit" / "killed.jsonl"
        assert len(load.received) >= ANSWERS_BEFORE_KILL - CLIENTS
        missing = load.received - logged_ids(log)
        assert not missing, f"{len(missing)} of {len(load.received)} received ids have no record"

        async with serve(config, stderr) as (process, url):  # recovers the chain, then stops
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(TIMEOUT_S):
                assert await process.wait() == 0
    verified = cli("audit", "verify", tmp_path / "audit")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shown = cli("audit", "show", sorted(load.received)[-1], "--log", tmp_path / "audit")
    assert shown.returncode == 0, shown.stdout + shown.stderr
