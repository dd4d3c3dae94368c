"""Store-and-forward under real failures (TESTING.md D1, D2, D4, D5): writer processes killed
with SIGKILL at random instants, a disk that fills up under a running process, links that go
down, and a real collector on 127.0.0.1 that loses acknowledgements.

Child processes print each key only after `put` returned it, so whatever the parent read
before the kill was acknowledged and must be found afterwards. Random schedules are seeded;
a failure message names the seed (set SPOOL_SEED to replay it)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sqlite3
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import router
from router.api.errors import error_middleware
from router.spool import Drainer, FullPolicy, Limits, Post, Spool, http_sender
from router.spool.collector import COLLECTOR_PATH, CollectorStore, collector_routes
from router.testing import FaultProxy

ROUTER_ROOT = Path(router.__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 60.0
SEED = int(os.environ.get("SPOOL_SEED", random.randrange(1 << 32)))

# A record's payload is a function of its key, so a damaged or mixed-up record cannot pass
# for a good one. The children run the same expression.
PAYLOAD = "lambda key: hashlib.sha256(key.encode()).digest() * 3"


def payload(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest() * 3


# Appends from 8 concurrent tasks (so commits are shared), printing each acknowledged key.
WRITER = f"""
import asyncio, hashlib, sys
from pathlib import Path
from router.spool import Spool

payload = {PAYLOAD}
path, run = Path(sys.argv[1]), sys.argv[2]

async def lane(spool, n):
    i = n
    while True:
        key = f"{{run}}-{{i}}"
        if await spool.put("sample", payload(key), key=key) == key:
            sys.stdout.write(key + "\\n")
            sys.stdout.flush()
        i += 8

async def main():
    spool = await Spool.open(path)
    counts = await spool.counts()
    print("open", counts.produced, counts.pending, counts.corrupt, flush=True)
    await asyncio.gather(*(lane(spool, n) for n in range(8)))

asyncio.run(main())
"""

# A site: produces samples at a steady rate (every 5th with a short TTL when asked) while a
# drainer uploads to the collector; with seconds=0 it only drains, then prints its counts.
SITE = f"""
import asyncio, dataclasses, hashlib, json, sys
from pathlib import Path
import aiohttp
from router.spool import Drainer, Spool, http_sender

payload = {PAYLOAD}
path, run, url = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
rate, seconds, short_every = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])

async def produce(spool):
    loop = asyncio.get_running_loop()
    start, i = loop.time(), 0
    while loop.time() - start < seconds:
        key = f"{{run}}-{{i}}"
        short = short_every and i % short_every == 0
        kind, ttl = ("short", 0.3) if short else ("sample", 3600.0)
        if await spool.put(kind, payload(key), ttl, key=key) == key:
            print(key, flush=True)
        i += 1
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))

async def main():
    spool = await Spool.open(path)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async def post(target, body, headers):
            async with http.post(target, data=body, headers=headers) as resp:
                return resp.status, await resp.read()
        drainer = Drainer(
            spool, http_sender(post, url), rate_per_s=400.0, batch_size=40,
            idle_s=0.05, backoff_base_s=0.05, backoff_max_s=0.2,
        )
        async with asyncio.TaskGroup() as group:
            drain = group.create_task(drainer.run())
            await produce(spool)
            while (await spool.counts()).pending:
                await asyncio.sleep(0.02)
            drain.cancel()
    print("done", json.dumps(dataclasses.asdict(await spool.counts())), flush=True)
    await spool.close()

asyncio.run(main())
"""

# Fills a disk (RLIMIT_FSIZE: writes past the limit fail with EFBIG) under a running spool,
# then frees it; every put is answered either way.
DISK_FULL = f"""
import asyncio, hashlib, json, resource, signal, sys
from pathlib import Path
from router.spool import Spool

payload = {PAYLOAD}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

async def burst(spool, prefix, n):
    keys = [f"{{prefix}}-{{i}}" for i in range(n)]
    got = await asyncio.gather(*(spool.put("sample", payload(k) * 10, key=k) for k in keys))
    for key in filter(None, got):
        print(key, flush=True)
    return got.count(None)

async def main():
    spool = await Spool.open(Path(sys.argv[1]))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), hard))
    refused = 0
    for round in range(40):
        refused += await burst(spool, f"full{{round}}", 8)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    after_refused = await burst(spool, "after", 8)
    report = {{"refused": refused, "after_refused": after_refused,
              "failed": (await spool.counts()).failed}}
    print("report", json.dumps(report), flush=True)
    await spool.close()

asyncio.run(main())
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROUTER_ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class Run:
    """One child process and every line it printed."""

    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [line for line in self.lines if " " not in line]

    def report(self, tag: str) -> str:
        return next(line.split(" ", 1)[1] for line in self.lines if line.startswith(tag + " "))


async def _read(run: Run) -> None:
    assert run.process.stdout is not None
    async for raw in run.process.stdout:
        line = raw.decode().strip()
        # A line cut by the kill has no newline yet: it was never fully acknowledged.
        if raw.endswith(b"\n") and line:
            run.lines.append(line)


@asynccontextmanager
async def child(script: str, *args: object, stderr: Path) -> AsyncIterator[Run]:
    """A Python child running `script`; its stdout is collected while the body runs and to the
    end after it; killed if still running when the body leaves."""
    with stderr.open("ab") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            *map(str, args),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env=child_env(),
        )
        run = Run(process)
        async with asyncio.timeout(CHILD_TIMEOUT_S), asyncio.TaskGroup() as group:
            group.create_task(_read(run))
            try:
                yield run
            finally:
                if process.returncode is None:
                    process.kill()
                await process.wait()


async def killed_after(script: str, delay: float, *args: object, stderr: Path) -> Run:
    """Start a child, SIGKILL it `delay` seconds later, and return what it printed."""
    async with child(script, *args, stderr=stderr) as run:
        await asyncio.sleep(delay)
        run.process.kill()
    return run


def stored_records(path: Path) -> dict[str, bytes]:
    """Every record in a spool file, read through the spool (checksums verified)."""
    with Spool.open_sync(path) as spool:
        counts = spool.counts_sync()
        records = spool.take_batch_sync(counts.pending + 1)
        assert counts.corrupt == 0
        assert counts.balanced, counts
    assert len(records) == counts.pending
    return {record.key: record.payload for record in records}


def moved_aside(folder: Path) -> list[Path]:
    return list(folder.glob("*.corrupt-*"))


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


class TestCrashSafety:
    @pytest.mark.parametrize(
        "kills", [pytest.param(50, id="50-kills"), pytest.param(200, marks=pytest.mark.long)]
    )
    async def test_kill_9_never_loses_or_corrupts_acknowledged_records(
        self, tmp_path: Path, kills: int
    ) -> None:
        """D2: a writer killed at random instants (in start-up, recovery, mid-commit) loses no
        acknowledged record and leaves no damaged one; every restart recovers the file."""
        rng = random.Random(SEED)
        path = tmp_path / "spool.db"
        acknowledged: set[str] = set()
        for run_number in range(kills):
            run = await killed_after(
                WRITER, rng.uniform(0.05, 0.35), path, f"r{run_number}", stderr=tmp_path / "err"
            )
            opened = [line.split()[1:] for line in run.lines if line.startswith("open ")]
            if opened:
                produced, pending, corrupt = map(int, opened[0])
                assert produced == pending >= len(acknowledged), f"run {run_number}, seed {SEED}"
                assert corrupt == 0, f"seed {SEED}"
            acknowledged.update(run.keys)
        assert len(acknowledged) > kills, f"too few appends to mean anything (seed {SEED})"
        assert integrity(path) == "ok"
        records = stored_records(path)
        assert acknowledged <= records.keys(), f"lost: {len(acknowledged - records.keys())}"
        assert all(records[key] == payload(key) for key in records), f"seed {SEED}"
        assert not moved_aside(tmp_path)


class Lossy:
    """The collector's route, but the first `refuse` batches get a 503 before being stored
    (overload), and the next `lose` are stored but answered 503, as if the acknowledgement
    were lost on the way back: the site must resend both kinds, and forget neither early."""

    def __init__(self, store: CollectorStore, *, refuse: int = 0, lose: int = 0) -> None:
        self.inner = collector_routes(store)[0].handler
        self.refuse = refuse
        self.lose = lose
        self.requests = 0

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.refuse:
            self.refuse -= 1
            return web.json_response({"error": "busy"}, status=503)
        response = await self.inner(request)
        if self.lose and response.status == 200:
            self.lose -= 1
            return web.json_response({"error": "lost"}, status=503)
        return response


@asynccontextmanager
async def collector_server(store: CollectorStore, handler: Lossy) -> AsyncIterator[TestServer]:
    app = web.Application(middlewares=[error_middleware])
    app.router.add_post(COLLECTOR_PATH, handler.__call__)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


class TestStoreAndForward:
    async def test_offline_restarts_then_online_delivers_each_record_once(
        self, tmp_path: Path
    ) -> None:
        """D1 (bounded): a site producing 100 samples/s is killed 6 times, offline then online;
        every acknowledged sample reaches the collector once, expired ones never, and
        delivered + expired + dropped = produced."""
        rng = random.Random(SEED)
        path, err = tmp_path / "spool.db", tmp_path / "err"
        store = await CollectorStore.open(tmp_path / "collector.db")
        handler = Lossy(store, refuse=2, lose=2)
        acknowledged: list[str] = []
        async with (
            collector_server(store, handler) as server,
            FaultProxy("127.0.0.1", server.port or 0) as link,
        ):
            url = f"{link.url}{COLLECTOR_PATH}"

            async def site(run: str, short_every: int, seconds: float) -> list[str]:
                args = (path, run, url, 100, 1e9, short_every)
                return (await killed_after(SITE, seconds, *args, stderr=err)).keys

            link.faults.reset = True  # the WAN is down: connections are refused
            for n in range(4):
                acknowledged += await site(f"off{n}", 5, rng.uniform(0.6, 1.2))
            await asyncio.sleep(0.4)  # every short TTL (0.3 s) has now passed
            assert handler.requests == 0
            link.faults.reset = False
            for n in range(2):
                acknowledged += await site(f"on{n}", 0, rng.uniform(0.7, 1.2))
            async with child(SITE, path, "final", url, 100, 0, 0, stderr=err) as final:
                assert await final.process.wait() == 0, err.read_text()[-2000:]
        counts = json.loads(final.report("done"))
        received = await store.read(limit=1_000_000)
        seen = await store.counts()
        await store.close()

        keys = [r.item.key for r in received]
        short = {k for k in acknowledged if k.startswith("off") and int(k.split("-")[1]) % 5 == 0}
        assert len(keys) == len(set(keys)) == seen["stored"], "duplicates after de-duplication"
        assert set(acknowledged) - short <= set(keys), f"acknowledged samples lost (seed {SEED})"
        assert not short & set(keys), "an expired record was delivered"
        assert seen["duplicates"] > 0, "no resend happened: the lost acknowledgements did not bite"
        assert all(r.item.payload == payload(r.item.key) for r in received)
        assert counts["pending"] == counts["dropped"] == counts["corrupt"] == 0
        assert counts["delivered"] == len(keys)
        assert counts["expired"] >= len(short) > 0
        assert counts["delivered"] + counts["expired"] + counts["dropped"] == counts["produced"]


class TestDiskFull:
    async def test_full_disk_refuses_appends_and_recovers(self, tmp_path: Path) -> None:
        """D4: when the disk fills under a running spool, puts answer None (counted as failed,
        nothing raised), acknowledged records stay intact, and appends work again once space
        returns, without a restart."""
        path = tmp_path / "spool.db"
        async with child(DISK_FULL, path, 256 * 1024, stderr=tmp_path / "err") as run:
            assert await run.process.wait() == 0, (tmp_path / "err").read_text()[-2000:]
        report = json.loads(run.report("report"))
        assert report["refused"] > 0, "the disk never filled"
        assert report["failed"] == report["refused"]
        assert report["after_refused"] == 0
        records = stored_records(path)
        assert set(run.keys) == records.keys()
        assert all(records[key] == payload(key) * 10 for key in records)
        assert "spool appends failing" in (tmp_path / "err").read_text()

    @pytest.mark.parametrize("policy", ["drop-oldest", "reject-new"])
    def test_tiny_spool_applies_its_full_policy(self, tmp_path: Path, policy: FullPolicy) -> None:
        """D4: a spool of a few KiB drops the oldest (or refuses the newest) and counts each."""
        with Spool.open_sync(
            tmp_path / "spool.db", Limits(max_bytes=4096, on_full=policy)
        ) as spool:
            answers = [spool.put_sync("sample", payload(f"k{i}"), key=f"k{i}") for i in range(100)]
            counts = spool.counts_sync()
            keys = [r.key for r in spool.take_batch_sync(1000)]
        assert counts.pending_bytes <= 4096
        assert counts.balanced
        if policy == "drop-oldest":
            assert None not in answers
            assert counts.dropped == 100 - counts.pending
            assert keys == [f"k{i}" for i in range(100 - counts.pending, 100)]
        else:
            assert answers.count(None) == counts.rejected == 100 - counts.pending
            assert keys == [f"k{i}" for i in range(counts.pending)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def aiohttp_post(http: aiohttp.ClientSession) -> Post:
    async def post(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        async with http.post(url, data=body, headers=headers) as resp:
            return resp.status, await resp.read()

    return post


class TestExpiryWhileOffline:
    async def test_ttl_passes_offline_across_a_restart(self, tmp_path: Path) -> None:
        """D5: records whose TTL passes while the link is down (with a restart in between) are
        never delivered, and the expired count is exact."""
        clock = FakeClock()
        path = tmp_path / "spool.db"
        store = await CollectorStore.open(tmp_path / "collector.db")
        handler = Lossy(store)
        ttl_of = {f"k{i}": (60.0 if i % 4 else 3600.0) for i in range(200)}
        expires_at = {}
        spool = await Spool.open(path, clock=clock)
        for key, ttl in ttl_of.items():
            await spool.put("sample", payload(key), ttl, key=key)
            expires_at[key] = clock.now + ttl
            clock.now += 0.25  # 50 s of production
        await spool.close()
        clock.now += 30  # the oldest 60 s records are past their TTL, the newest are not
        expired = {key for key, at in expires_at.items() if at <= clock.now}
        assert 0 < len(expired) < len(ttl_of)
        async with (
            collector_server(store, handler) as server,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        ):
            spool = await Spool.open(path, clock=clock)
            url = f"http://127.0.0.1:{server.port}{COLLECTOR_PATH}"
            online = False
            drain = Drainer(
                spool,
                http_sender(aiohttp_post(http), url),
                rate_per_s=1e6,
                batch_size=16,
                online=lambda: online,
                clock=clock,
            )
            assert await drain.step() > 0  # offline: purges what expired, sends nothing
            assert (await spool.counts()).expired == len(expired)
            online = True
            while (await spool.counts()).pending:
                assert await drain.step() == 0.0
            counts = await spool.counts()
            await spool.close()
        delivered = {r.item.key for r in await store.read(limit=1000)}
        await store.close()
        assert delivered == set(ttl_of) - expired
        assert (counts.delivered, counts.expired, counts.pending) == (
            len(delivered),
            len(expired),
            0,
        )
        assert counts.balanced
