"""A test kit shipped with the package: a real router on a loopback port, and tiny ONNX models.

`serve_in_thread` runs the app on its own event loop in a background thread, so blocking
clients (the sync `tritonclient.http`) and clients on another loop can both talk to it.
The model helpers need `onnx` (the `test`/`bench` extra), imported only when called.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from router.app import build_app
from router.inference.repository import MODEL_FILE, SessionBuilder, default_session_builder
from router.settings import Settings

__all__ = [
    "DATATYPES",
    "RouterThread",
    "identity_model",
    "refusing_provider_builder",
    "serve_in_thread",
    "settings_for",
    "slow_session_builder",
    "write_repository",
]

T = TypeVar("T")

# Every tensor datatype of the KServe v2 protocol.
DATATYPES: tuple[str, ...] = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)


def settings_for(
    repository: Path | None = None, *, server: Mapping[str, Any] | None = None, **models: Any
) -> Settings:
    """Default settings with `models.repository` and any other `models`/`server` fields set,
    validated exactly as a config file would be."""
    data = {"models": {"repository": repository, **models}, "server": dict(server or {})}
    return Settings.model_validate(data)


class RouterThread:
    """`build_app(settings, ...)` served on 127.0.0.1 by a thread that owns its event loop."""

    def __init__(
        self, settings: Settings, *, start_timeout_s: float = 60.0, **build_app_kwargs: Any
    ) -> None:
        self.settings = settings
        self._kwargs = build_app_kwargs
        self._timeout = start_timeout_s
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="router-under-test", daemon=True)
        self.app: web.Application | None = None
        self.port = 0

    @property
    def host_port(self) -> str:
        """`127.0.0.1:PORT`, the form that tritonclient's `url` takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    def start(self) -> RouterThread:
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

    def __enter__(self) -> RouterThread:
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
        self.app = build_app(self.settings, **self._kwargs)
        # The same runner options as router.server, so cancellation behaves as in production.
        runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self._started.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


@contextlib.contextmanager
def serve_in_thread(settings: Settings, **build_app_kwargs: Any) -> Iterator[RouterThread]:
    """A running router for the `with` block; stopped (models unloaded) on exit."""
    with RouterThread(settings, **build_app_kwargs) as server:
        yield server


def identity_model(datatype: str, *, name: str = "identity") -> bytes:
    """A serialized ONNX model `INPUT0 -> Identity -> OUTPUT0` of one v2 datatype, any shape
    whose first dimension is the batch."""
    from onnx import TensorProto, helper

    elem = {
        "BOOL": TensorProto.BOOL,
        "UINT8": TensorProto.UINT8,
        "UINT16": TensorProto.UINT16,
        "UINT32": TensorProto.UINT32,
        "UINT64": TensorProto.UINT64,
        "INT8": TensorProto.INT8,
        "INT16": TensorProto.INT16,
        "INT32": TensorProto.INT32,
        "INT64": TensorProto.INT64,
        "FP16": TensorProto.FLOAT16,
        "FP32": TensorProto.FLOAT,
        "FP64": TensorProto.DOUBLE,
        "BYTES": TensorProto.STRING,
    }[datatype]
    dims: list[str | int] = ["N", "M"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        name,
        [helper.make_tensor_value_info("INPUT0", elem, dims)],
        [helper.make_tensor_value_info("OUTPUT0", elem, dims)],
    )
    # Opset 17 / IR 8, like the demo models, so any supported onnxruntime loads it.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def write_repository(
    root: Path,
    models: Mapping[str, Mapping[int, bytes]],
    configs: Mapping[str, Mapping[str, Any] | str] | None = None,
) -> Path:
    """Write `<root>/<model>/<version>/model.onnx` (+ `config.yaml` from a mapping or YAML text)
    and return `root`."""
    for model, versions in models.items():
        for version, data in versions.items():
            folder = root / model / str(version)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / MODEL_FILE).write_bytes(data)
    for model, config in (configs or {}).items():
        text = config if isinstance(config, str) else yaml.safe_dump(dict(config))
        (root / model).mkdir(parents=True, exist_ok=True)
        (root / model / "config.yaml").write_text(text, encoding="utf-8")
    return root


class _SlowSession:
    """A real session whose every run takes at least `delay_s` longer (runs on the executor)."""

    def __init__(self, session: Any, delay_s: float) -> None:
        self._session = session
        self._delay_s = delay_s

    def run(self, output_names: Any, feeds: Any, *args: Any) -> Any:
        time.sleep(self._delay_s)
        return self._session.run(output_names, feeds, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def slow_session_builder(
    delay_s: float, *, base: SessionBuilder = default_session_builder
) -> SessionBuilder:
    """A session builder whose sessions sleep `delay_s` per run: a busy model on demand."""

    def build(data: bytes, threads: int, chosen: list[tuple[str, dict[str, Any]]]) -> Any:
        return _SlowSession(base(data, threads, chosen), delay_s)

    return build


def refusing_provider_builder(
    refused: Sequence[str], *, base: SessionBuilder = default_session_builder
) -> SessionBuilder:
    """A session builder that fails, like a provider that cannot take the model, whenever the
    first provider asked for is in `refused`."""

    def build(data: bytes, threads: int, chosen: list[tuple[str, dict[str, Any]]]) -> Any:
        first = chosen[0][0] if chosen else ""
        if first in refused:
            raise RuntimeError(f"{first} cannot compile this model (refused by the test kit)")
        return base(data, threads, chosen)

    return build
