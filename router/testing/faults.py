"""FaultProxy: a TCP proxy on loopback that injects network faults between router and upstream
(what toxiproxy does, which this machine cannot install): added latency, blackhole (accept and
stay silent), reset (RST on accept), cut the response after N bytes. The mode can change while
connections are open; it applies to connections accepted afterwards (`drop_connections()` makes
pooled connections reconnect and meet it)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass

from router.tasks import cancel_all

# How long close() lets reset connections' handlers end before cancelling what is left.
CLOSE_WAIT_S = 2.0


@dataclass(slots=True)
class Faults:
    latency_s: float = 0.0  # before each chunk is passed on, both directions
    blackhole: bool = False  # accept, read, never answer
    reset: bool = False  # accept, then abort with RST
    limit_bytes: int | None = None  # pass this many response bytes, then close


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.faults = Faults()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Reset open connections so their handlers end by themselves: a handler cancelled
        # instead makes Python 3.11's start_server report "Exception in callback" on the loop.
        self.drop_connections()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CLOSE_WAIT_S)
        await cancel_all(list(self._tasks))

    def drop_connections(self) -> None:
        """Reset every open connection, so pooled ones meet the faults set since they opened."""
        for writer in list(self._writers):
            _abort_with_rst(writer)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        faults = Faults(**{k: getattr(self.faults, k) for k in Faults.__slots__})
        try:
            if faults.reset:
                _abort_with_rst(writer)
                return
            if faults.blackhole:
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            await asyncio.gather(
                _pipe(reader, up_writer, faults.latency_s, None),
                _pipe(up_reader, writer, faults.latency_s, faults.limit_bytes),
            )
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float, limit: int | None
) -> None:
    sent = 0
    try:
        while chunk := await reader.read(65536):
            if latency:
                await asyncio.sleep(latency)
            if limit is not None and sent + len(chunk) >= limit:
                writer.write(chunk[: limit - sent])
                await writer.drain()
                _abort_with_rst(writer)
                return
            sent += len(chunk)
            writer.write(chunk)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
