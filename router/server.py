"""Run the app: uvloop, listen, print what was loaded, drain gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TextIO

from aiohttp import web

from router import __version__
from router.api.state import MODELS, STATUS
from router.app import build_app
from router.errors import ConfigError
from router.heap import settle_after_startup
from router.inference.repository import ModelRepository
from router.settings import Settings


def serve(settings: Settings, out: TextIO = sys.stdout) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop has no Windows build
        return asyncio.run(_serve(settings, out))
    return int(uvloop.run(_serve(settings, out)))


async def _serve(settings: Settings, out: TextIO) -> int:
    try:
        app = build_app(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runner = web.AppRunner(
        app,
        access_log=None,
        handler_cancellation=True,  # a client that goes away cancels its queued inference
        shutdown_timeout=settings.server.drain_timeout_s,
    )
    try:
        await runner.setup()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    site = web.TCPSite(runner, settings.server.host, settings.server.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        print(
            f"error: cannot listen on {settings.server.host}:{settings.server.port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    _announce(settings, runner, app[MODELS], out)
    settle_after_startup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    app[STATUS].draining = True
    print("draining: readiness is now 503; finishing in-flight requests", file=out, flush=True)
    await asyncio.sleep(settings.server.readiness_grace_s)
    await runner.cleanup()  # stops accepting, waits up to drain_timeout_s for in-flight work
    print("stopped", file=out, flush=True)
    return 0


def _announce(
    settings: Settings, runner: web.AppRunner, models: ModelRepository, out: TextIO
) -> None:
    site = settings.site
    urls = ", ".join(f"http://{_host(a)}:{a[1]}" for a in runner.addresses)
    print(
        f"layer-router {__version__}: {site.tier.value} site '{site.id}' listening on {urls}",
        file=out,
    )
    print(f"model repository: {models.path}", file=out)
    for model in models.models.values():
        if model.error:
            print(f"  {model.name}: NOT LOADED: {model.error}", file=out)
        for entry in model.versions.values():
            if entry.ready:
                print(
                    f"  {model.name} v{entry.version}: {entry.provider} "
                    f"(sha256 {entry.sha256[:12]})",
                    file=out,
                )
            else:
                print(f"  {model.name} v{entry.version}: NOT LOADED: {entry.reason}", file=out)
    out.flush()


def _host(address: tuple[str, int]) -> str:
    host = address[0]
    return f"[{host}]" if ":" in host else host
