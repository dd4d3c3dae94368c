"""`layer-router serve --workers 2` as a real process tree: both workers serve the one port
(SO_REUSEPORT), each writes its own audit chain into one shared spool, a killed worker is
restarted, and SIGTERM drains them all and exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest

import router
from router.spool import Spool

ROUTER_ROOT = Path(router.__file__).resolve().parents[1]
URL = re.compile(r"listening on (http://[^\s,]+)")
STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")
INFER = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, 0]}]}
TIMEOUT_S = 60.0


@dataclass
class Tree:
    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    seen: int = 0  # lines already matched by `expect`

    async def expect(self, pattern: str | re.Pattern[str]) -> re.Match[str]:
        """The next stdout line (after those already matched) that matches `pattern`."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        assert self.process.stdout is not None
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                while self.seen < len(self.lines):
                    line = self.lines[self.seen]
                    self.seen += 1
                    if match := regex.search(line):
                        return match
                line = (await self.process.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"stdout ended before {pattern!r}: {self.lines}")
                self.lines.append(line)

    async def until_seen(self, pattern: re.Pattern[str], count: int) -> list[re.Match[str]]:
        """Read stdout until `count` lines in all match `pattern`, whatever else comes between
        or before: the supervisor's and the workers' lines share one pipe in no fixed order."""
        assert self.process.stdout is not None
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                found = [m for line in self.lines if (m := pattern.search(line))]
                if len(found) >= count:
                    return found
                line = (await self.process.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"stdout ended before {pattern!r}: {self.lines}")
                self.lines.append(line)

    def pids(self) -> dict[int, int]:
        """The newest pid of each worker index."""
        return {int(m[1]): int(m[2]) for line in self.lines if (m := STARTED.search(line))}


@asynccontextmanager
async def serve(*args: str, log: Path) -> AsyncIterator[Tree]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROUTER_ROOT), env.get("PYTHONPATH")]))
    with log.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router", "serve", *args,
            stdout=asyncio.subprocess.PIPE, stderr=err, env=env, start_new_session=True,
        )  # fmt: skip
        tree = Tree(process)
        try:
            yield tree
        except (AssertionError, TimeoutError) as exc:  # what the processes said, to tell why
            err.flush()
            said = await asyncio.to_thread(log.read_text)
            heard = "".join(tree.lines)[-4000:]
            raise AssertionError(f"{exc!r}\nstdout:\n{heard}\nstderr:\n{said[-4000:]}") from exc
        finally:
            if process.returncode is None:
                # The whole group: workers left behind would hold stdout open (and the port).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(
        "server: {readiness_grace_s: 0.2, drain_timeout_s: 5}\n"
        "audit: {path: audit, fsync: never}\n"
        "spool: {path: spool.sqlite3}\n"
    )
    return path


async def infer_fresh_connections(url: str, count: int) -> list[int]:
    """`count` requests, each on a connection of its own, so the kernel spreads them."""
    statuses = []
    for _ in range(count):
        connector = aiohttp.TCPConnector(force_close=True)
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
            http.post(f"{url}/v2/models/color_classifier/infer", json=INFER) as response,
        ):
            statuses.append(response.status)
    return statuses


async def serving(url: str) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            try:
                if await infer_fresh_connections(url, 4) == [200] * 4:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


def audit_ids(folder: Path) -> dict[str, set[str]]:
    """Each audit chain's request record ids."""
    return {
        path.name: {doc["id"] for doc in map(orjson.loads, path.read_bytes().splitlines())}
        for path in sorted(folder.glob("*.jsonl"))
    }


def spooled_ids(path: Path) -> set[str]:
    """The ids of the audit copies in the spool file."""
    with Spool.open_sync(path) as spool:
        batch = spool.take_batch_sync(100_000)
    return {record.key.removeprefix("audit:") for record in batch if record.kind == "audit"}


async def spooled_at_least(path: Path, count: int) -> None:
    """Wait until the shared spool holds `count` records (opened as one more non-draining
    worker would)."""

    def produced() -> int:
        with Spool.open_sync(path, shared=True, drains=False) as spool:
            return spool.counts_sync().produced

    async with asyncio.timeout(TIMEOUT_S):
        while True:
            if await asyncio.to_thread(produced) >= count:
                return
            await asyncio.sleep(0.1)


async def test_two_workers_share_the_port_restart_and_drain(config: Path, tmp_path: Path) -> None:
    """40 requests reach both workers (two audit chains, one spool holding all 40); a worker
    killed with SIGKILL comes back under a new pid; SIGHUP leaves them running; SIGTERM stops
    everything with exit 0."""
    async with serve(
        "--config", str(config), "--workers", "2", "--port", "0", log=tmp_path / "err.log"
    ) as tree:
        await tree.until_seen(STARTED, 2)
        url = (await tree.until_seen(URL, 2))[0][1]  # both workers listen
        await serving(url)
        assert await infer_fresh_connections(url, 40) == [200] * 40

        # Spool appends are committed just after the answers: let them land before a kill.
        await spooled_at_least(tmp_path / "spool.sqlite3", 40)
        first = tree.pids()
        os.kill(first[0], signal.SIGKILL)
        await tree.expect(r"worker 0 exited \(signal SIGKILL\); restarting")
        await tree.until_seen(STARTED, 3)
        assert tree.pids()[0] != first[0]
        await tree.until_seen(URL, 3)
        await serving(url)

        # SIGHUP reaches the workers, which reload and keep running (same pids).
        pids = tree.pids()
        tree.process.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        await serving(url)
        assert tree.pids() == pids
        for pid in pids.values():
            os.kill(pid, 0)  # still alive

        tree.process.send_signal(signal.SIGTERM)
        await tree.expect("supervisor: stopped")
        assert await asyncio.wait_for(tree.process.wait(), TIMEOUT_S) == 0

    chains = audit_ids(tmp_path / "audit")
    spooled = spooled_ids(tmp_path / "spool.sqlite3")
    # Two chains, one per worker, and the one spool holds copies from both.
    assert len([ids for ids in chains.values() if ids & spooled]) >= 2, (chains, spooled)
    assert len(spooled) >= 40


async def test_port_held_by_another_program_exits_1(config: Path, tmp_path: Path) -> None:
    """A port another program listens on (without SO_REUSEPORT) fails at once, exit 1."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        async with serve(
            "--config", str(config), "--workers", "2", "--port", str(port), log=tmp_path / "e"
        ) as tree:
            assert await asyncio.wait_for(tree.process.wait(), TIMEOUT_S) == 1
        assert "cannot listen" in (tmp_path / "e").read_text()


async def test_workers_that_cannot_start_stop_the_site(tmp_path: Path) -> None:
    """Workers failing their first start (the spool path is a folder: exit 2) are not
    restarted in a loop: the supervisor stops and exits with their code."""
    config = tmp_path / "site.yaml"
    config.write_text(f"spool: {{path: {tmp_path}}}\n")
    async with serve(
        "--config", str(config), "--workers", "2", "--port", "0", log=tmp_path / "e"
    ) as tree:
        await tree.expect(r"worker \d failed to start \(exit 2\); stopping")
        assert await asyncio.wait_for(tree.process.wait(), TIMEOUT_S) == 2


async def test_workers_stop_when_the_supervisor_is_killed(config: Path, tmp_path: Path) -> None:
    """SIGKILL to the supervisor leaves no worker holding the port: each notices within a few
    seconds, drains and exits."""
    async with serve(
        "--config", str(config), "--workers", "2", "--port", "0", log=tmp_path / "e"
    ) as tree:
        await tree.until_seen(STARTED, 2)
        await tree.until_seen(URL, 2)
        workers = list(tree.pids().values())
        tree.process.kill()
        await tree.until_seen(re.compile("supervisor gone: stopping this worker"), 2)

        async with asyncio.timeout(TIMEOUT_S):
            while True:
                if not any(running(pid) for pid in workers):
                    break
                await asyncio.sleep(0.1)


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit may wait long for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
