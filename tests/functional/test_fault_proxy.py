"""The test kit's FaultProxy (router/testing/faults.py) on loopback: closing it with
connections still open ends them quietly, with no error for the event loop to report."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from router.testing import FaultProxy, Faults


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.mark.parametrize(
    "faults",
    [Faults(), Faults(blackhole=True), Faults(latency_s=0.05)],
    ids=["passing", "blackhole", "latency"],
)
async def test_close_with_open_connections_reports_no_error(faults: Faults) -> None:
    """Connections open at close() are ended without 'Exception in callback' on the loop
    (a cancelled connection handler makes Python 3.11's asyncio.start_server report one)."""
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    target = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    proxy = await FaultProxy("127.0.0.1", port).start()
    proxy.faults = faults
    clients = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(3)]
    try:
        for _, writer in clients:
            writer.write(b"ping")
            await writer.drain()
        for _ in range(500):  # every connection accepted by the proxy, within 5 s
            if proxy.connections == len(clients):
                break
            await asyncio.sleep(0.01)
        assert proxy.connections == len(clients)
        await proxy.close()
        for reader, _ in clients:  # each client sees its connection end (closed or reset)
            async with asyncio.timeout(5):
                with contextlib.suppress(ConnectionError):
                    while await reader.read(65536):
                        pass
        await asyncio.sleep(0.1)  # the loop runs the handlers' done callbacks
    finally:
        for _, writer in clients:
            writer.close()
        target.close()
        loop.set_exception_handler(None)
    assert reported == []
