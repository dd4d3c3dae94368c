"""The open response of one upstream HTTP/1.1 exchange: fed by its `H1Connection`, read whole
(`read`), streamed chunk by chunk as the bytes arrive (`chunks`) or dropped (`abort`). gzip and
deflate bodies are inflated as they are read (inflate.py), as by the aiohttp client."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from multidict import CIMultiDict, CIMultiDictProxy

from router.errors import UpstreamError, UpstreamResponseTooLarge
from router.upstreams.h1 import H1Connection
from router.upstreams.inflate import Inflater, inflater_for

OFFERED = ("gzip", "x-gzip", "deflate", "br")  # pool.py's Accept-Encoding


class H1Response:
    """An open response; the caller must `read`, drain `chunks`, or `abort`."""

    def __init__(
        self,
        connection: H1Connection,
        where: str,
        head_only: bool,
        release: Callable[[H1Connection, bool], None],
    ) -> None:
        self.status = 0
        self.headers: CIMultiDictProxy[str] = _EMPTY
        self.raw_headers: list[tuple[str, str]] = []
        self.headers_done = False
        self.complete = False
        self.interim = False
        self.until_close = False
        self.keep_alive = False
        self._connection = connection
        self._where = where
        self._head_only = head_only
        self._release = release
        self._released = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._inflater: Inflater | None = None
        self._refused: UpstreamError | None = None  # a body not a byte of which may be relayed

    # fed by the connection

    def headers_received(self, status: int, keep_alive: bool) -> None:
        self.status = status
        self.keep_alive = keep_alive
        headers = CIMultiDict(self.raw_headers)
        self.headers = CIMultiDictProxy(headers)
        self.headers_done = True
        self.until_close = (
            "content-length" not in headers
            and "transfer-encoding" not in headers
            and status not in (204, 304)
        )
        try:
            self._inflater = inflater_for(headers.get("content-encoding", ""), self._where, OFFERED)
        except UpstreamError as exc:  # raised once there is a body at all (HEAD, 204 have none)
            self._refused = exc
        if self._head_only:
            # httptools cannot be told a HEAD answer has no body: end here, never reuse.
            self.keep_alive = False
            self.finish()
            return
        self._wake()

    def body(self, data: bytes) -> int:
        if self.complete:
            return 0
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()
        return self._buffered

    def finish(self) -> None:
        if self.complete:
            return
        self.complete = True
        self.headers_done = True
        self._wake()

    def fail(self, error: UpstreamError) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # used by the caller

    async def wait_headers(self) -> bool:
        """True once the status and headers arrived; False if the connection closed before
        a single byte of response (a stale keep-alive connection)."""
        while not self.headers_done and self._error is None:
            await self._wait()
        if self._error is not None and not self.headers_done:
            connection = self._connection
            if connection.reused and not connection.received:
                return False
            raise self._error
        return True

    def error(self) -> UpstreamError | None:
        return self._error

    async def read(self, limit: int) -> bytes:
        # A declared length over the limit is refused before a byte is read (it counts
        # compressed bytes: inflated, the body would be larger still).
        length = self.headers.get("content-length", "")
        if length.isdecimal() and int(length) > limit:
            self.abort()
            raise self._too_large(limit)
        body = bytearray()
        async for chunk in self._iterate():
            body += chunk
            if len(body) > limit:
                self.abort()
                raise self._too_large(limit)
        return bytes(body)

    def _too_large(self, limit: int) -> UpstreamResponseTooLarge:
        return UpstreamResponseTooLarge(f"{self._where}: response larger than {limit} bytes")

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._iterate():
            yield chunk

    async def _iterate(self) -> AsyncIterator[bytes]:
        try:
            while True:
                if self._chunks:
                    if self._refused is not None:  # a body at all (HEAD, 204 have none)
                        raise self._refused
                    data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                    self._chunks.clear()
                    self._buffered = 0
                    self._connection.consumed(0)
                    if self._inflater is None:
                        yield data
                        continue
                    for out in self._inflater.feed(data):
                        yield out
                    continue
                if self._error is not None:
                    raise self._error
                if self.complete:
                    break
                await self._wait()
            tail = self._inflater.end() if self._inflater is not None else b""
            if tail:
                yield tail
        except BaseException:
            self.abort()
            raise
        self._done()

    def _done(self) -> None:
        if not self._released:
            self._released = True
            self._release(self._connection, self.keep_alive and self.complete)

    def abort(self) -> None:
        """Close the connection: an aborted response must never be reused on the pool."""
        self._connection.close()
        if not self._released:
            self._released = True
            self._release(self._connection, False)


_EMPTY: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
