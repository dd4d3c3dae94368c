"""Run the app: uvloop, listen, print what was loaded, drain gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import TextIO

from aiohttp import web

from router import __version__
from router.api.admin import start_admin
from router.api.draining import end_streams
from router.api.state import BUNDLE, RELOADER, RUNTIME, STATUS, TLS
from router.app import build_app
from router.errors import ConfigError
from router.heap import settle_after_startup
from router.inference.repository import ModelRepository
from router.listener import GuardedSite, make_runner
from router.logs import access_log_options
from router.settings import Settings
from router.workers import supervisor_pid

ORPHAN_CHECK_S = 1.0


def serve(
    settings: Settings,
    out: TextIO = sys.stdout,
    read_settings: Callable[[], Settings] | None = None,
) -> int:
    """`read_settings` re-reads the site config on SIGHUP (None: keep the settings)."""
    # Until the loop's handler is in place (after the models load, which can take long) a
    # SIGHUP must not take SIGHUP's default action, ending the process: it is ignored.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop has no Windows build
            return asyncio.run(_serve(settings, out, read_settings))
        return int(uvloop.run(_serve(settings, out, read_settings)))
    finally:
        signal.signal(signal.SIGHUP, previous)


class _Refused(Exception):
    """Start-up failed: the message for stderr and the exit code (2 config, 1 listening)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


async def _serve(
    settings: Settings, out: TextIO, read_settings: Callable[[], Settings] | None
) -> int:
    # From here on, during start-up too: a SIGTERM before the router listens (loading its
    # models) or just after is a drain once it has started, never the signal's default death.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        app, runner, admin = await _start(settings, read_settings)
    except _Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    _announce(settings, runner, app[RUNTIME].current.models, out)
    if settings.routing.offline and settings.upstreams:
        _say(
            out,
            f"offline (--offline or routing.offline): the {len(settings.upstreams)} upstream "
            "cluster(s) configured are not used and spool uploads wait until it is turned off "
            "(a restart without --offline, or routing.offline: false and a reload)",
        )
    if settings.keys_in_clear:
        _say(
            out,
            "warning: API keys reach this listener over plain http from other machines; "
            "set server.tls (or put a TLS proxy in front)",
        )
    if admin is not None:
        _say(out, f"admin (/metrics, /status) on {_urls(admin)}")
    settle_after_startup()
    await _until_stopped(app, out, stop)
    app[STATUS].draining = True
    _say(out, "draining: readiness is now 503; finishing in-flight requests")
    await asyncio.sleep(settings.server.readiness_grace_s)
    if admin is not None:
        await admin.cleanup()
    # Streams still going when the drain runs out end with an error event, in the grace
    # aiohttp gives handlers after its own wait, before it cancels them (a silent cut).
    ending = asyncio.get_running_loop().call_later(
        settings.server.drain_timeout_s, end_streams, app[STATUS]
    )
    try:
        await runner.cleanup()  # stops accepting, waits up to drain_timeout_s for in-flight work
    finally:
        ending.cancel()
    _say(out, "stopped")
    return 0


async def _start(
    settings: Settings, read_settings: Callable[[], Settings] | None
) -> tuple[web.Application, web.AppRunner, web.AppRunner | None]:
    """The app built and started, listening on the API port and the admin port."""
    try:
        app = build_app(settings, read_settings=read_settings)
        runner = make_runner(
            app,
            settings.limits,
            **access_log_options(settings.logging.access_log),
            shutdown_timeout=settings.server.drain_timeout_s,
        )
        await runner.setup()
    except ConfigError as exc:
        raise _Refused(str(exc), 2) from None
    listener = app[TLS].listener
    server = settings.server
    site = GuardedSite(
        runner,
        server.host,
        server.port,
        ssl_context=listener.context if listener is not None else None,
        # Several workers listen on one port; the kernel spreads connections between them.
        reuse_port=server.workers > 1 or None,
        handshake_timeout_s=settings.limits.header_timeout_s,
    )
    where = f"{server.host}:{server.port}"
    try:
        await site.start()
        where = f"{settings.admin.host}:{settings.admin.port} (admin)"
        admin = await _start_admin(settings, app)
    except OSError as exc:
        await runner.cleanup()
        raise _Refused(f"cannot listen on {where}: {exc.strerror or exc}", 1) from None
    return app, runner, admin


async def _until_stopped(app: web.Application, out: TextIO, stop: asyncio.Event) -> None:
    """Serve until `stop` (SIGTERM or SIGINT); SIGHUP reloads meanwhile (finished before
    returning)."""
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()
    loop.add_signal_handler(signal.SIGHUP, _reload_on_signal, app, reloads, out)
    supervisor = supervisor_pid()
    watches = [loop.create_task(_stop_when_orphaned(supervisor, stop, out))] if supervisor else []
    await stop.wait()
    # Not removed: SIGHUP's default action ends the process, which would cut the drain short.
    loop.add_signal_handler(signal.SIGHUP, _say, out, "SIGHUP ignored while stopping")
    for watch in watches:
        watch.cancel()
    await asyncio.gather(*reloads, return_exceptions=True)


async def _stop_when_orphaned(supervisor: int, stop: asyncio.Event, out: TextIO) -> None:
    """A worker whose supervisor died (SIGKILL, OOM; even while the worker was starting)
    drains and exits instead of holding the port with nobody left to stop or restart it."""
    while True:
        if os.getppid() != supervisor:
            break
        await asyncio.sleep(ORPHAN_CHECK_S)
    _say(out, "supervisor gone: stopping this worker")
    stop.set()


async def _start_admin(settings: Settings, app: web.Application) -> web.AppRunner | None:
    """The admin listener (/metrics, /status) next to the API's; None when disabled."""
    admin = settings.admin
    return await start_admin(app, admin.host, admin.port) if admin.enabled else None


def _urls(runner: web.AppRunner, scheme: str = "http") -> str:
    return ", ".join(f"{scheme}://{_host(a)}:{a[1]}" for a in runner.addresses)


def _reload_on_signal(app: web.Application, reloads: set[asyncio.Task[bool]], out: TextIO) -> None:
    task = asyncio.get_running_loop().create_task(app[RELOADER].reload("SIGHUP"))
    reloads.add(task)
    task.add_done_callback(reloads.discard)
    task.add_done_callback(lambda done: _report_reload(app, done, out))


def _report_reload(app: web.Application, done: asyncio.Task[bool], out: TextIO) -> None:
    state = app[RELOADER].state
    if state.last_error:
        _say(out, "reload failed: still serving the previous configuration")
        return
    _say(out, f"reloaded: generation {state.generation}")
    bundle, started = app[BUNDLE], state.last_reload
    if bundle.last_error_at is not None and started is not None and bundle.last_error_at >= started:
        # The log says why too; the operator at the console must not read only "reloaded".
        still = f"still revision {bundle.revision}"
        _say(out, f"  policy bundle rejected, {still}: {bundle.last_error}")
    for key in state.restart_required:
        _say(out, f"  {key} changed: applies after a restart")


def _announce(
    settings: Settings, runner: web.AppRunner, models: ModelRepository, out: TextIO
) -> None:
    site = settings.site
    urls = _urls(runner, "https" if settings.server.tls is not None else "http")
    lines = [
        f"layer-router {__version__}: {site.tier.value} site '{site.id}' listening on {urls}",
        f"model repository: {models.path}",
    ]
    for model in models.models.values():
        if model.error:
            lines.append(f"  {model.name}: NOT LOADED: {model.error}")
        for entry in model.versions.values():
            state = (
                f"{entry.provider} (sha256 {entry.sha256[:12]})"
                if entry.ready
                else f"NOT LOADED: {entry.reason}"
            )
            lines.append(f"  {model.name} v{entry.version}: {state}")
    _say(out, "\n".join(lines))


def _say(out: TextIO, text: str) -> None:
    """One write: workers share their supervisor's stdout, and print() writes the line and its
    newline separately, so two workers' lines could interleave."""
    try:
        out.write(text + "\n")
        out.flush()
    except (OSError, ValueError):
        # Its reader gone (`serve | grep -m1 listening`): these lines are notes, not worth a
        # drain cut short; from now on they go nowhere (and the exit's flush cannot fail).
        _silence(out)


def _silence(out: TextIO) -> None:
    try:
        target = out.fileno()
    except (OSError, ValueError):  # no file descriptor (a StringIO): nothing to silence
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, target)
    finally:
        os.close(devnull)


def _host(address: tuple[str, int]) -> str:
    host = address[0]
    return f"[{host}]" if ":" in host else host
