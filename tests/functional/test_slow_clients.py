"""Slow clients (TESTING.md S9): 200 connections trickling a request head or a body one byte a
second, alongside normal traffic. With the default limits every slow connection is closed
within 10 s, and at least 99.9% of the normal requests succeed. The run is bounded to ~15 s."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from router.settings import Settings
from router.testing import RouterThread

EDGE_MODELS = Path(__file__).resolve().parents[2] / "edge_models"
CLASSIFY = "/v2/models/color_classifier/infer"
SLOW_HEADS = 100
SLOW_BODIES = 100
NORMAL_WORKERS = 4
CLOSE_WITHIN_S = 10.0
RUN_S = 11.0  # normal traffic runs past the point where every slow one should be gone
RGB = orjson.dumps(
    {"inputs": [{"name": "rgb", "datatype": "FP32", "shape": [1, 3], "data": [0.2, 0.4, 0.6]}]}
)


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    settings = Settings.model_validate(
        {"models": {"repository": str(EDGE_MODELS), "inference_threads": 1}}
    )
    with RouterThread(settings) as server:
        yield server


async def trickle(port: int, first: bytes, drip: bytes) -> float:
    """Send `first`, then `drip` one byte a second; seconds until the router closed on us."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def drain_until_closed() -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    closed = asyncio.ensure_future(drain_until_closed())
    try:
        writer.write(first)
        for byte in drip:
            if closed.done():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(bytes([byte]))
                await writer.drain()
            await asyncio.wait([closed], timeout=1.0)
        await asyncio.wait_for(closed, CLOSE_WITHIN_S + 3)
        return time.monotonic() - started
    finally:
        closed.cancel()
        writer.close()


async def normal_traffic(url: str, until: float) -> tuple[int, int]:
    """Requests back to back from a few workers until `until`: (succeeded, sent)."""
    ok = sent = 0
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def worker() -> None:
            nonlocal ok, sent
            while time.monotonic() < until:
                sent += 1
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.post(url + CLASSIFY, data=RGB) as response:
                        await response.read()
                        ok += response.status == 200
                await asyncio.sleep(0.005)

        await asyncio.gather(*(worker() for _ in range(NORMAL_WORKERS)))
    return ok, sent


async def test_slow_clients_are_closed_and_normal_traffic_is_served(router: RouterThread) -> None:
    """100 slow heads and 100 slow bodies are all closed within 10 s of connecting; normal
    requests made meanwhile succeed at least 99.9% of the time."""
    port = router.port
    start = f"POST {CLASSIFY} HTTP/1.1\r\nHost: router\r\n".encode()
    head_drip = b"X-Slow: " + b"z" * 40 + b"\r\n\r\n"
    body_head = start + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    slow = [trickle(port, start, head_drip) for _ in range(SLOW_HEADS)]
    slow += [trickle(port, body_head, b"7" * 1000) for _ in range(SLOW_BODIES)]
    traffic = normal_traffic(router.url, time.monotonic() + RUN_S)
    *closed_after, (ok, sent) = await asyncio.gather(*slow, traffic)
    assert len(closed_after) == SLOW_HEADS + SLOW_BODIES
    assert max(closed_after) <= CLOSE_WITHIN_S
    assert sent >= 100
    assert ok / sent >= 0.999
