"""Real servers on loopback for tests: the router (or any aiohttp app) in a background thread
that owns its event loop, so blocking clients (sync tritonclient, the sync openai SDK) and
clients on another loop can talk to it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestServer

from router.api.admin import start_admin
from router.app import build_app
from router.listener import make_runner
from router.logs import access_log_options
from router.settings import LimitsSettings, Settings

T = TypeVar("T")


def settings_for(
    repository: Path | None = None,
    *,
    server: Mapping[str, Any] | None = None,
    cache: bool = False,
    **models: Any,
) -> Settings:
    """Default settings with `models.repository` and any other `models`/`server` fields set,
    validated exactly as a config file would be. The response cache is off unless asked for:
    a test that repeats a request usually means to see it served again."""
    data = {
        "models": {"repository": repository, **models},
        "server": dict(server or {}),
        "cache": {"enabled": cache},
    }
    return Settings.model_validate(data)


def central_chat_cluster(
    upstream_url: str, model: str = "gpt-test", **settings: Any
) -> dict[str, Any]:
    """An OpenAI cluster `central` at the central tier serving `model` from one endpoint, with
    no health checks, and any other cluster `settings` on top."""
    return {
        "name": "central",
        "tier": "central",
        "protocols": ["openai"],
        "models": [model],
        "endpoints": [{"url": upstream_url}],
        "health_check": {"enabled": False},
        **settings,
    }


def chat_forwarding_settings(upstream_url: str, **sections: Any) -> Settings:
    """A site that forwards OpenAI requests for model `gpt-test` to one central endpoint (no
    health checks, no cache), with any other settings `sections` on top."""
    cluster = central_chat_cluster(upstream_url)
    return Settings.model_validate(
        {"upstreams": [cluster], "cache": {"enabled": False}, **sections}
    )


class AppThread:
    """An aiohttp app made by `factory` on the thread's own loop, served on 127.0.0.1."""

    def __init__(
        self,
        factory: Callable[[], web.Application],
        *,
        start_timeout_s: float = 60.0,
        limits: LimitsSettings | None = None,
    ) -> None:
        self._factory = factory
        self._limits = limits  # the router's listener limits; None: a plain aiohttp runner
        self._timeout = start_timeout_s
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="server-under-test", daemon=True)
        self.app: web.Application | None = None
        self.port = 0
        self.access_log = False  # our safe access log (router.logs), as `logging.access_log`

    @property
    def host_port(self) -> str:
        """`127.0.0.1:PORT`, the form that tritonclient's `url` takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    def start(self) -> AppThread:
        self._thread.start()
        if not self._started.wait(self._timeout):
            raise TimeoutError(f"router did not start within {self._timeout} s")
        if self._error is not None:
            self._thread.join(self._timeout)
            raise RuntimeError("router failed to start") from self._error
        return self

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(self._timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"router did not stop within {self._timeout} s")
        if self._error is not None:
            raise RuntimeError("router failed while serving or stopping") from self._error

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` run on the router's loop thread, where app state may be touched."""
        loop = self._loop
        assert loop is not None, "the router is not running"

        async def _call() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(_call(), loop).result(self._timeout)

    def call_async(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """`await fn(*args)` on the router's loop thread (e.g. a reload), and its result."""
        loop = self._loop
        assert loop is not None, "the router is not running"
        return asyncio.run_coroutine_threadsafe(fn(*args), loop).result(self._timeout)

    def __enter__(self) -> AppThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); a thread has nobody else to tell
            self._error = exc
        finally:
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.app = self._factory()
        # The same runner options as router.server, so cancellation behaves as in production.
        log = access_log_options(self.access_log)
        if self._limits is not None:
            runner = make_runner(self.app, self._limits, **log)
        else:
            runner = web.AppRunner(self.app, handler_cancellation=True, **log)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            admin = await self._start_admin(self.app)
            try:
                self._started.set()
                await self._stop.wait()
            finally:
                if admin is not None:
                    await admin.cleanup()
        finally:
            await runner.cleanup()

    async def _start_admin(self, app: web.Application) -> web.AppRunner | None:
        return None


class RouterThread(AppThread):
    """`build_app(settings, ...)` served on 127.0.0.1 by a thread that owns its event loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        start_timeout_s: float = 60.0,
        admin: bool = False,
        access_log: bool = False,
        **build_app_kwargs: Any,
    ) -> None:
        self.settings = settings
        self._admin = admin
        self.admin_port = 0
        super().__init__(
            lambda: build_app(settings, **build_app_kwargs),
            start_timeout_s=start_timeout_s,
            limits=settings.limits,
        )
        self.access_log = access_log

    @property
    def admin_url(self) -> str:
        """The admin listener (/metrics, /status), started with `admin=True` on a free port."""
        assert self.admin_port, "start the RouterThread with admin=True"
        return f"http://127.0.0.1:{self.admin_port}"

    async def _start_admin(self, app: web.Application) -> web.AppRunner | None:
        if not self._admin:
            return None
        runner = await start_admin(app, "127.0.0.1", 0)
        self.admin_port = runner.addresses[0][1]
        return runner

    def __enter__(self) -> RouterThread:
        self.start()
        return self


@contextlib.contextmanager
def serve_in_thread(settings: Settings, **build_app_kwargs: Any) -> Iterator[RouterThread]:
    """A running router for the `with` block; stopped (models unloaded) on exit."""
    with RouterThread(settings, **build_app_kwargs) as server:
        yield server


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """`app` on an ephemeral 127.0.0.1 port of the running loop, without an access log (as
    `layer-router serve` runs); yields its base URL."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log=None)
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def router_in_front_of(
    stack: contextlib.AsyncExitStack, tmp_path: Path, *clusters: Mapping[str, Any]
) -> tuple[web.Application, str]:
    """The real router app, with no local models, in front of `clusters` (upstream settings),
    served until `stack` closes; returns the app and its base URL."""
    repository = tmp_path / "models"
    repository.mkdir(exist_ok=True)
    settings = Settings.model_validate(
        {
            "models": {"repository": str(repository), "inference_threads": 1},
            "upstreams": [dict(c) for c in clusters],
        }
    )
    app = build_app(settings)
    return app, await stack.enter_async_context(serving(app))
