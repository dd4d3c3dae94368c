"""`H1Transport`: the lean upstream client. Keep-alive HTTP/1.1 connections (h1.py) pooled per
endpoint and TLS context, at most `max_connections` exchanges at once per cluster (aiohttp's
connector limit counts the same thing). No redirects followed, no cookies, no User-Agent.

A connection goes back to the pool only when its response was read to the end and the
upstream allows keep-alive; anything else (aborted, unread, cancelled, broken) is closed.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from urllib.parse import quote, unquote, urlsplit

from router.errors import (
    ConnectFailed,
    UnforwardableHeader,
    UpstreamError,
    UpstreamTimeout,
    UpstreamTlsFailed,
)
from router.upstreams.client import UpstreamRequest
from router.upstreams.h1 import H1Connection, PoolKey
from router.upstreams.h1_response import H1Response
from router.upstreams.tls import ClientTls

# An idle connection is reused within this time and closed after it: below the 5 s after which
# common servers (uvicorn, so vLLM; Node.js) close theirs. A request written on a connection
# the upstream is closing fails, and a POST may not be sent again.
KEEPALIVE_S = 4.0
_BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_SAFE_PATH = "/?&=%:@!$'()*+,;~-._#[]"

Key = PoolKey


class H1Transport:
    def __init__(self, max_connections: int, tls: ClientTls | None = None) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._tls = tls
        self._idle: dict[Key, list[H1Connection]] = {}
        self._open: set[H1Connection] = set()
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None
        self._targets: dict[str, tuple[str, str, int, str, str, str]] = {}

    async def send(
        self, request: UpstreamRequest, where: str, connect_timeout: float
    ) -> H1Response:
        key, host_header, path, authorization = self._target(request.url, where)
        head = _encode_head(request, host_header, path, authorization)
        payload = head + request.body if request.body else head
        slotted = not request.probe
        release = self._release if slotted else self._keep
        for _ in range(2):
            if slotted:
                request.queued = True
                await self._slots.acquire()
                request.queued = False
            connection = self._take(key)
            try:
                if connection is None:
                    connection = await self._connect(key, where, connect_timeout)
            except BaseException:
                if slotted:
                    self._slots.release()
                raise
            response = H1Response(connection, where, request.method == "HEAD", release)
            try:
                connection.start(response, payload, where)
                if await response.wait_headers():
                    return response
            except BaseException:
                response.abort()  # cancelled or failed mid-exchange: the connection is unusable
                raise
            response.abort()
            # A pooled connection the upstream closed without answering: sent again on a new
            # one only when the method is idempotent (as aiohttp does); a POST may have been
            # acted on, and whether to replay it is forward.py's decision.
            if request.method not in _IDEMPOTENT:
                raise response.error() or UpstreamError(f"{where}: connection reset")
        raise UpstreamError(f"{where}: connection closed before an answer")  # pragma: no cover

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
        for connection in list(self._open):
            connection.close()
        self._idle.clear()

    # the pool

    def _take(self, key: Key) -> H1Connection | None:
        """The most recently used idle connection; one idle for KEEPALIVE_S or more (the
        sweep has not come by yet) is closed instead: so are all older ones then."""
        idle = self._idle.get(key)
        if not idle:
            return None
        fresh_since = asyncio.get_running_loop().time() - KEEPALIVE_S
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            if connection.idle_since > fresh_since:
                return connection
            connection.close()
        return None

    def _release(self, connection: H1Connection, reusable: bool) -> None:
        self._slots.release()
        self._keep(connection, reusable)

    def _keep(self, connection: H1Connection, reusable: bool) -> None:
        """Back to the pool if `reusable`, else closed: a probe's end (it took no slot)."""
        if not reusable or connection.closed or self._closed:
            connection.close()
            return
        loop = asyncio.get_running_loop()
        connection.idle_since = loop.time()
        self._idle.setdefault(connection.key, []).append(connection)
        if self._sweep is None:
            # One timer for the pool, not one per release: a request pays no timer.
            self._sweep = loop.call_later(KEEPALIVE_S, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close connections idle for KEEPALIVE_S or more; again later while any stay idle."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - KEEPALIVE_S
        for idle in list(self._idle.values()):
            for connection in [c for c in idle if c.idle_since <= cutoff]:
                connection.close()  # connection_lost takes it off the list
                if connection in idle:
                    idle.remove(connection)
        if any(self._idle.values()):
            self._sweep = loop.call_later(KEEPALIVE_S / 2, self._sweep_idle)

    def _lost(self, connection: H1Connection) -> None:
        self._open.discard(connection)
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    async def _connect(self, key: Key, where: str, connect_s: float) -> H1Connection:
        _, host, port, context, server_hostname = key
        connection = H1Connection(self._lost, where)
        connection.key = key
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_s):
                transport, _ = await loop.create_connection(
                    lambda: connection, host, port, ssl=context, server_hostname=server_hostname
                )
        except TimeoutError:
            raise UpstreamTimeout(f"{where}: connect timed out") from None
        except (ssl.SSLError, ssl.CertificateError):
            # Unknown CA, wrong name, expired, client certificate refused: no request was sent.
            raise UpstreamTlsFailed(f"{where}: TLS handshake failed") from None
        except OSError:
            raise ConnectFailed(f"{where}: connection failed") from None
        # uvloop may call connection_made only after create_connection returned.
        connection.transport = transport
        self._open.add(connection)
        return connection

    def _target(self, url: str, where: str) -> tuple[Key, str, str, str]:
        """The pool key, Host header, request target and Basic credentials of `url`."""
        parsed = self._targets.get(url)
        if parsed is None:
            parsed = _split(url, where)
            if len(self._targets) >= 512:  # paths with client queries could grow it unbounded
                self._targets.clear()
            self._targets[url] = parsed
        scheme, host, port, host_header, path, authorization = parsed
        context: ssl.SSLContext | None = None
        server_hostname: str | None = None
        if scheme == "https":  # read per request: a reload swaps the context
            context, server_hostname = self._tls_for(host)
        return (scheme, host, port, context, server_hostname), host_header, path, authorization

    def _tls_for(self, host: str) -> tuple[ssl.SSLContext, str]:
        tls = self._tls
        configured = tls.context if tls is not None else True
        context = configured if isinstance(configured, ssl.SSLContext) else _default_context()
        name = tls.server_hostname if tls is not None and tls.server_hostname else host
        return context, name


def _split(url: str, where: str) -> tuple[str, str, int, str, str, str]:
    """Scheme, host, port, Host header, request target and the Authorization its
    `user:password@` makes ("" without one) of `url`."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "https"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise UpstreamError(f"{where}: bad endpoint URL") from None
    default = port == (443 if secure else 80)
    host_header = (f"[{host}]" if ":" in host else host) + ("" if default else f":{port}")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    if not path.isascii():
        path = quote(path, safe=_SAFE_PATH)
    authorization = ""
    if parts.username is not None:  # sent as aiohttp sends it, not dropped
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return parts.scheme, host, port, host_header, path, authorization


_DEFAULT: list[ssl.SSLContext] = []


def _default_context() -> ssl.SSLContext:
    """The system trust store, built once (building one reads every CA file)."""
    if not _DEFAULT:
        _DEFAULT.append(ssl.create_default_context())
    return _DEFAULT[0]


def _encode_head(request: UpstreamRequest, host: str, path: str, authorization: str = "") -> bytes:
    lines = [f"{request.method} {path} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in request.headers.items():
        lines.append(f"{name}: {value}\r\n")
    if authorization and not any(name.lower() == "authorization" for name in request.headers):
        lines.append(f"Authorization: {authorization}\r\n")
    if request.body or request.method not in _BODYLESS:
        lines.append(f"Content-Length: {len(request.body)}\r\n")
    # As aiohttp asks with brotli installed (br is smallest on a thin WAN link); the answer
    # is inflated before anyone reads it (H1Response).
    lines.append("Accept-Encoding: gzip, deflate, br\r\n\r\n")
    head = "".join(lines)
    # A CR or LF inside a name or value would start a header (or a request) of its own. The
    # request's fault, not the upstream's: never counted against it.
    if head.count("\n") != len(lines) + 2 or head.count("\r") != len(lines) + 2:
        raise UnforwardableHeader("a request header holds a line break")
    # aiohttp decoded the client's header bytes as UTF-8, a byte that is not as a surrogate
    # escape: encoding back the same way sends them on exactly as they came.
    try:
        return head.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise UnforwardableHeader("a request header cannot be encoded") from None
