"""One upstream HTTP/1.1 connection: an asyncio.Protocol whose bytes go through httptools'
response parser (llhttp, what uvicorn uses), so the exchange costs a few callbacks instead of
aiohttp's client stack. `H1Response` (h1_response.py) is the open response a caller reads or
streams.

Foreign errors (OSError, ssl.SSLError, httptools' parser errors) become `router.errors` types
here and in `pool.py`: the transport boundary, as `client.py` is aiohttp's.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from router.errors import UpstreamError, UpstreamReset, UpstreamTlsFailed

if TYPE_CHECKING:
    from router.upstreams.h1_response import H1Response

MAX_HEADER_BYTES = 64 * 1024  # status line and headers together
HIGH_WATER = 256 * 1024  # unread body bytes before the socket stops being read

# scheme, host, port, TLS context, server name: connections are shared only within one key
PoolKey = tuple[str, str, int, "ssl.SSLContext | None", "str | None"]


class H1Connection(asyncio.Protocol):
    """One keep-alive connection, one exchange at a time. `on_idle` hands it back to the pool
    once a response was read to its end and may be reused; `on_lost` when it closes."""

    def __init__(self, on_lost: Callable[[H1Connection], None], where: str) -> None:
        self.transport: asyncio.Transport | None = None
        self.on_lost = on_lost
        self.where = where
        self.key: PoolKey = ("", "", 0, None, None)
        self.closed = False
        self.used = False  # carried an exchange before: a stale keep-alive can fail on reuse
        self.reused = False
        self.received = False  # any byte of the current exchange's response
        self.idle_since = 0.0  # loop time it went back to the pool
        self._parser = httptools.HttpResponseParser(self)
        self._response: H1Response | None = None
        self._header_bytes = 0
        self._too_large = False
        self._stray = False  # an answer began after the exchange's own had ended
        self._reading = True

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        response = self._response
        if response is None or response.complete:
            # Bytes nobody asked for (after the answer ended, or before a request): read as
            # the next request's answer, they would hand it another's. Never trusted.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._stray:  # a second answer in the same bytes as the first: closed
                self.close()
                return
            # httptools re-raises a callback's exception as its own: the flag says which.
            problem = "response headers too large" if self._too_large else "malformed response"
            self._fail(UpstreamError(f"{self.where}: {problem}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self._response
        if response is not None and not response.complete:
            if exc is None and response.until_close and response.headers_done:
                response.finish()
            elif isinstance(exc, ssl.SSLError):
                # TLS 1.3: a refused client certificate arrives as an alert on the first read.
                response.fail(UpstreamTlsFailed(f"{self.where}: TLS refused by the server"))
            else:
                response.fail(UpstreamReset(f"{self.where}: connection reset"))
        self.on_lost(self)

    def pause_writing(self) -> None:  # request bodies are written whole; nothing to pause
        pass

    # the exchange

    def start(self, response: H1Response, request: bytes, where: str) -> None:
        # A pooled connection carries many exchanges: its errors name the current one's.
        self.where = where
        self._response = response
        self._header_bytes = 0
        self.reused = self.used
        self.used = True
        self.received = False
        assert self.transport is not None
        self.transport.write(request)

    def consumed(self, buffered: int) -> None:
        if not self._reading and buffered < HIGH_WATER and self.transport is not None:
            self._reading = True
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()  # never a graceful close: unread bytes are discarded

    def _fail(self, error: UpstreamError) -> None:
        if self._response is not None:
            self._response.fail(error)
        self.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._response is not None and self._response.complete:
            self._stray = True
            raise UpstreamError("bytes after the answer")  # stops the parser

    def on_status(self, status: bytes) -> None:
        self._count(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        assert self._response is not None
        # aiohttp's server writes header text as UTF-8: read it so, or the client gets
        # mojibake. Bytes that are not UTF-8 stay latin-1 text (a surrogate escape would
        # not survive every writer).
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = value.decode("latin-1")
        self._response.raw_headers.append((name.decode("latin-1"), text))

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # interim (100 Continue, 103): the real answer follows
            response.raw_headers.clear()
            response.interim = True
            return
        response.headers_received(status, self._parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        response = self._response
        assert response is not None
        if response.body(body) >= HIGH_WATER and self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        response = self._response
        assert response is not None
        if response.interim:
            response.interim = False
            return
        response.finish()

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._too_large = True
            raise UpstreamError("headers too large")  # stops the parser
