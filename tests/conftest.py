"""Fixtures shared by every suite: the demo repository, a router serving it, and clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from functools import cache
from pathlib import Path

import aiohttp
import onnxruntime as ort
import pytest
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_aio

from router.testing import RouterThread, serve_in_thread, settings_for

EDGE_MODELS = Path(__file__).resolve().parents[1] / "edge_models"

# Every network call in the suite is bounded by these.
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def edge_models() -> Path:
    return EDGE_MODELS


@pytest.fixture(scope="session")
def demo_server() -> Iterator[RouterThread]:
    """One router serving edge_models/ for the whole session (stats only ever grow)."""
    with serve_in_thread(settings_for(EDGE_MODELS, inference_threads=2)) as server:
        yield server


@pytest.fixture
def triton(demo_server: RouterThread) -> Iterator[triton_http.InferenceServerClient]:
    """The sync tritonclient, pointed at the demo server."""
    client = triton_http.InferenceServerClient(
        demo_server.host_port,
        connection_timeout=CONNECT_TIMEOUT_S,
        network_timeout=REQUEST_TIMEOUT_S,
    )
    yield client
    client.close()


@pytest.fixture
async def aio_triton(
    demo_server: RouterThread,
) -> AsyncIterator[triton_aio.InferenceServerClient]:
    """The asyncio tritonclient, pointed at the demo server."""
    async with triton_aio.InferenceServerClient(
        demo_server.host_port, conn_timeout=REQUEST_TIMEOUT_S
    ) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session for what the real clients cannot send (bad bodies, raw headers)."""
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


@cache
def _reference_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def reference() -> Callable[[Path], ort.InferenceSession]:
    """A plain onnxruntime CPU session for a model file: the ground truth to compare with."""
    return _reference_session


@pytest.fixture(autouse=True, scope="session")
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Audit trails and spools of routers under test go to a temporary folder, never to the
    user's state directory; subprocesses inherit it."""
    import os

    folder = tmp_path_factory.mktemp("state")
    previous = os.environ.get("LAYER_ROUTER_STATE_DIR")
    os.environ["LAYER_ROUTER_STATE_DIR"] = str(folder)
    yield
    if previous is None:
        os.environ.pop("LAYER_ROUTER_STATE_DIR", None)
    else:
        os.environ["LAYER_ROUTER_STATE_DIR"] = previous
