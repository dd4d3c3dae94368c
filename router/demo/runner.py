"""Start the demo topology, print what to try, and stop every child on Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from router.demo import guide
from router.demo.mock_llm import mock_llm_app
from router.demo.switchboard import Switchboard, control_app
from router.demo.topology import LLM_MODEL, TIERS, Ports, build_repositories, url, write_configs

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class DemoOptions:
    base_port: int = 8000  # 0: free ports anywhere
    workdir: Path | None = None  # None: a temporary folder, removed afterwards


def run(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop has no Windows build
        return asyncio.run(_run(options, out))
    return int(uvloop.run(_run(options, out)))


async def _run(options: DemoOptions, out: TextIO) -> int:
    with contextlib.ExitStack() as stack:
        root = options.workdir
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lr-demo-")))
        return await _run_in(root, Ports.from_base(options.base_port), out)
    raise AssertionError("unreachable")  # pragma: no cover - mypy: ExitStack may swallow


async def _run_in(root: Path, ports: Ports, out: TextIO) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    board = await Switchboard({t: ports.of(t) for t in TIERS}).start()
    runners: list[web.AppRunner] = []
    children: dict[str, asyncio.subprocess.Process] = {}
    try:
        build_repositories(root)
        configs = write_configs(root, ports, board.urls())
        topology = _topology(ports, root)
        runners.append(await _listen(mock_llm_app(LLM_MODEL), ports.llm))
        runners.append(await _listen(control_app(board, topology), ports.control))
        for tier in reversed(TIERS):  # from the far end, so each tier discovers the next
            children[tier] = await _spawn(tier, configs[tier], root)
            await _wait_ready(tier, children[tier], ports.of(tier), root, stop)
        print(guide.text(ports, root), file=out)
        print("DEMO_TOPOLOGY " + json.dumps(topology), file=out, flush=True)
        return await _watch(children, stop, out)
    except DemoFailed as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        await _stop_children(children)
        for runner in runners:
            await runner.cleanup()
        await board.close()
        print("demo stopped: every tier terminated", file=out, flush=True)


class DemoFailed(Exception):
    pass


def _topology(ports: Ports, root: Path) -> dict[str, Any]:
    return {
        **{tier: url(ports.of(tier)) for tier in TIERS},
        "mock_llm": url(ports.llm),
        "control": url(ports.control),
        "admin": {tier: url(port) for tier, port in ports.admin.items()},
        "workdir": str(root),
    }


async def _listen(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    except OSError as exc:
        await runner.cleanup()
        raise DemoFailed(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
    return runner


async def _spawn(tier: str, config: Path, root: Path) -> asyncio.subprocess.Process:
    log = (root / f"{tier}.log").open("wb")
    try:
        # Its own session: Ctrl-C reaches the demo only, which then stops the tiers in order.
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "router",
            "serve",
            "--config",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()  # the child holds its own copy


async def _wait_ready(
    tier: str, child: asyncio.subprocess.Process, port: int, root: Path, stop: asyncio.Event
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline and not stop.is_set():
            if child.returncode is not None:
                raise DemoFailed(f"the {tier} tier exited ({_tail(root / f'{tier}.log')})")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"{url(port)}/v2/health/ready") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise DemoFailed(f"the {tier} tier did not become ready (log: {root / f'{tier}.log'})")


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1] if lines else "no output"


async def _watch(
    children: dict[str, asyncio.subprocess.Process], stop: asyncio.Event, out: TextIO
) -> int:
    """Until Ctrl-C: 0. A tier that dies on its own ends the demo: 1."""
    waits = {asyncio.ensure_future(child.wait()): tier for tier, child in children.items()}
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([stopper, *waits], return_when=asyncio.FIRST_COMPLETED)
    for task in [stopper, *waits]:
        task.cancel()
    if stopper in done:
        print("stopping the demo...", file=out, flush=True)
        return 0
    dead = next(waits[t] for t in done if t in waits)
    print(f"error: the {dead} tier exited; stopping the demo", file=sys.stderr, flush=True)
    return 1


async def _stop_children(children: dict[str, asyncio.subprocess.Process]) -> None:
    """SIGTERM to every tier (they drain), SIGKILL to any still running after the timeout."""
    running = [c for c in children.values() if c.returncode is None]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
    try:
        await asyncio.wait_for(asyncio.gather(*(c.wait() for c in running)), STOP_TIMEOUT_S)
    except TimeoutError:
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
        await asyncio.gather(*(c.wait() for c in running))
