"""The listening side's defences against clients that cost more than they ask for: a bounded
time to send a request head (aiohttp alone waits as long as bytes keep trickling), an idle
timeout, header size and count limits (431; 414 for a request target), a cap on open
connections, and error answers for malformed requests that never quote the request back.

aiohttp builds one RequestHandler (the asyncio protocol) per connection from its Server;
GuardedRunner makes that Server hand out GuardedHandlers instead."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from router.settings import LimitsSettings

# The request Content-Encodings aiohttp inflates here; any other would reach a handler as the
# raw compressed bytes, so it is refused with 415 (RFC 9110 §15.5.16) instead.
CONTENT_CODINGS = ("identity", "gzip", "deflate") + ("br",) * HAS_BROTLI + ("zstd",) * HAS_ZSTD
UNSUPPORTED_CODING = f"unsupported Content-Encoding (accepted: {', '.join(CONTENT_CODINGS)})"

_BUSY_BODY = orjson.dumps({"error": "too many open connections; retry later"})
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_BUSY_BODY), _BUSY_BODY)
)
# A refused connection stays half-open this long at most, reading and dropping what the client
# sends: closing at once with its request unread makes the kernel send a reset, and a reset
# makes the client's TCP stack throw away the 503 it had not read yet.
REFUSED_LINGER_S = 1.0


class GuardedServer(Server):
    limits: LimitsSettings
    open_connections: int

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)


class GuardedHandler(RequestHandler):
    __slots__ = ("_counted", "_guard", "_head_timer", "_refused")

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._head_timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._refused: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.open_connections >= guard.limits.max_connections:
            self._manager = None  # never registered: connection_lost has nothing to undo
            # Not an isinstance check: uvloop's TCPTransport does not subclass asyncio's.
            self._refused = cast(asyncio.Transport, transport)
            self._refused.write(BUSY)
            if self._refused.can_write_eof():
                self._refused.write_eof()  # the answer, then our FIN; the client closes its side
                self._loop.call_later(REFUSED_LINGER_S, self._refused.close)
            else:
                self._refused.close()  # TLS has no half-close: close_notify after the answer
            return
        guard.open_connections += 1
        self._counted = True
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._guard.open_connections -= 1
        self._disarm()
        super().connection_lost(exc)

    def eof_received(self) -> None:
        if self._refused is not None:
            self._refused.close()  # the client read the 503 and left

    def data_received(self, data: bytes) -> None:
        if self._refused is not None:
            return  # a refused connection's request is never read
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._disarm()  # a whole head arrived
        elif data and self._head_timer is None and self._between_requests():
            self._arm()  # the first bytes of the next request: its head is now on the clock

    def _between_requests(self) -> bool:
        return not self._request_in_progress and not self._messages

    def _arm(self) -> None:
        self._head_timer = self._loop.call_later(
            self._guard.limits.header_timeout_s, self._head_overdue
        )

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def force_close(self) -> None:
        """Closed by the router between requests (missed head deadline, idleness): a TLS
        client that never answers our close_notify (it stopped reading) is dropped after the
        head deadline, not the 30 s asyncio waits, which would hold its place under
        max_connections. A close after an answer keeps asyncio's wait, to flush its end."""
        transport = self.transport
        super().force_close()
        if (
            transport is not None
            and transport.get_extra_info("ssl_object") is not None
            and self._between_requests()
        ):
            self._loop.call_later(self._guard.limits.header_timeout_s, self._drop, transport)

    def _drop(self, transport: asyncio.BaseTransport) -> None:
        if self._counted:  # its connection not lost yet
            cast(asyncio.Transport, transport).abort()

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self._between_requests():
            self.force_close()

    def stop_lingering(self) -> None:
        """Close right after the answer instead of draining the rest of the body: for a
        client too slow to send it, waiting longer is what it wants."""
        self._lingering_time = 0.0

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer quotes the offending bytes; ours names the problem only."""
        super().handle_error(request, status, exc, message)  # logs; raises if bytes went out
        text = "malformed HTTP request"
        if isinstance(exc, LineTooLong) and exc.args[1] == target_limit(self._guard.limits):
            status, text = 414, "request target too long"
        elif isinstance(exc, LineTooLong) or (
            isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message
        ):
            status, text = 431, "request header fields too large or too many"
        elif isinstance(exc, ContentEncodingError) and _coding(request) not in CONTENT_CODINGS:
            status, text = 415, UNSUPPORTED_CODING
        elif status >= 500:
            text = "internal error"
        response = web.Response(
            status=status, body=orjson.dumps({"error": text}), content_type="application/json"
        )
        response.force_close()
        return response


def target_limit(limits: LimitsSettings) -> int:
    """The request line's limit: one byte over a header field's, so the two tell apart."""
    return limits.max_header_bytes + 1


def _coding(request: BaseRequest | None) -> str:
    return request.headers.get("Content-Encoding", "").lower() if request is not None else ""


class GuardedRunner(web.AppRunner):
    """An AppRunner whose connections are GuardedHandlers, limited by `limits`."""

    def __init__(self, app: web.Application, limits: LimitsSettings, **kwargs: Any) -> None:
        super().__init__(
            app,
            keepalive_timeout=limits.idle_timeout_s,
            # One byte apart so that a LineTooLong says which limit it hit (its `args[1]`):
            # the request target (414) or a header field (431).
            max_line_size=target_limit(limits),
            max_field_size=limits.max_header_bytes,
            max_headers=limits.max_headers,
            # After an early 413/408 the rest of a body is drained this long at most, so the
            # client can read the answer before the connection closes.
            lingering_time=1.0,
            **kwargs,
        )
        self._limits = limits

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        # The Application builds a plain Server; the protocol factory is its __call__.
        server.__class__ = GuardedServer
        assert isinstance(server, GuardedServer)
        server.limits = self._limits
        server.open_connections = 0
        return server


class GuardedSite(web.TCPSite):
    """A TCPSite whose TLS handshakes must finish within the request-head deadline: until a
    handshake is done the connection is not yet a GuardedHandler's (no head timer, not in the
    connection count), and asyncio's own default leaves a silent client 60 s."""

    def __init__(
        self, runner: web.BaseRunner, *args: Any, handshake_timeout_s: float, **kwargs: Any
    ) -> None:
        super().__init__(runner, *args, **kwargs)
        self._handshake_timeout_s = handshake_timeout_s

    async def start(self) -> None:
        if self._ssl_context is None:
            await super().start()
            return
        await web.BaseSite.start(self)  # registered with the runner, as TCPSite.start does
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._handshake_timeout_s,
            # No ssl_shutdown_timeout: it also bounds flushing an answer's last bytes to a
            # slow reader after a close; GuardedHandler.force_close bounds idle closes.
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]


def make_runner(app: web.Application, limits: LimitsSettings, **kwargs: Any) -> web.AppRunner:
    """The runner router.server and the test kit use, so tests see production's limits.
    `kwargs` go to aiohttp's AppRunner (access log options, shutdown_timeout, ...)."""
    kwargs.setdefault("access_log", None)
    # A client that goes away cancels its queued inference.
    kwargs.setdefault("handler_cancellation", True)
    return GuardedRunner(app, limits, **kwargs)
