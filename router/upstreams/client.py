"""The transport boundary: the only module that touches aiohttp's client or catches its
errors, mapping them onto `router.errors.UpstreamError` (httpx's map_httpcore_exceptions idea).
The lean client (`h1.py`, `pool.py`, clusters' default) maps socket and TLS errors the same way.

`Transport` is a one-method protocol so tests can pass any object with `send`; both clients'
responses are `UpstreamResponse`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from router.errors import (
    ConnectFailed,
    UpstreamError,
    UpstreamReset,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
    UpstreamTlsFailed,
)
from router.settings import ClusterSettings
from router.upstreams.inflate import Inflater, inflater_for
from router.upstreams.tls import ClientTls

# What the aiohttp client asks for and inflates itself (inflate.py): aiohttp's own decoder
# passes a gzip or br body cut short on as a complete, shorter one.
OFFERED = ("gzip", "x-gzip", "deflate", "br")
ACCEPT_ENCODING = "gzip, deflate, br"


@dataclass(slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    # A health check or discovery: never queued behind requests for one of the cluster's
    # connection slots (the lean client), so a pool busy with long streams is not "down".
    probe: bool = False
    # Set by the lean client while the request waits for a connection slot: a try that
    # times out then was held up by our own queue, not by the upstream.
    queued: bool = False


class UpstreamResponse(Protocol):
    """An open upstream response; the caller must `read`, drain `chunks`, or `abort`."""

    status: int
    headers: CIMultiDictProxy[str]

    async def read(self, limit: int) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def abort(self) -> None: ...


class AiohttpResponse:
    """An aiohttp response as an `UpstreamResponse`."""

    def __init__(self, response: aiohttp.ClientResponse, where: str) -> None:
        self._response = response
        self._where = where
        self.status = response.status
        self.headers: CIMultiDictProxy[str] = response.headers
        self._inflater: Inflater | None = None
        self._refused: UpstreamError | None = None  # raised once there is a body at all
        try:
            self._inflater = inflater_for(
                response.headers.get("Content-Encoding", ""), where, OFFERED
            )
        except UpstreamError as exc:
            self._refused = exc

    async def read(self, limit: int) -> bytes:
        # Content-Length counts compressed bytes: over the limit, inflated they are more still.
        # A read that fails or is given up (deadline, cancelled) closes the connection at once
        # (chunks): left to the garbage collector, it would hold a socket and a pool slot.
        length = self._response.content_length
        if length is not None and length > limit:
            self.abort()
            raise too_large(self._where, limit)
        body = bytearray()
        async for chunk in self.chunks():
            body += chunk
            if len(body) > limit:
                self.abort()
                raise too_large(self._where, limit)
        return bytes(body)

    async def chunks(self) -> AsyncIterator[bytes]:
        # StreamReader.read(n) returns what one read brought, not n bytes: read to the end.
        # A body shorter than its Content-Length is aiohttp's ClientPayloadError (an aborted
        # response, not a small one), mapped to UpstreamReset.
        inflater = self._inflater
        try:
            with map_errors(self._where):
                async for chunk in self._response.content.iter_any():
                    if self._refused is not None and chunk:
                        raise self._refused
                    if inflater is None:
                        yield chunk
                        continue
                    for out in inflater.feed(chunk):
                        yield out
            tail = inflater.end() if inflater is not None else b""
            if tail:
                yield tail
        except BaseException:
            self.abort()  # half read, or not decodable: never reused
            raise
        self._response.release()

    def abort(self) -> None:
        """Close the connection: an aborted response must never be reused on the pool."""
        self._response.close()


def too_large(where: str, limit: int) -> UpstreamResponseTooLarge:
    return UpstreamResponseTooLarge(f"{where}: response larger than {limit} bytes")


class Transport(Protocol):
    async def send(
        self, request: UpstreamRequest, where: str, connect_timeout: float
    ) -> UpstreamResponse: ...


class HttpTransport:
    """aiohttp client with one pooled session per cluster; redirects are never followed.

    The TLS context is read per request (aiohttp pools connections per context), so a context
    rebuilt by `ClientTls.reload` is used by the next new connection."""

    def __init__(self, session: aiohttp.ClientSession, tls: ClientTls | None = None) -> None:
        self._session = session
        self._tls = tls
        # Probes on a session of their own: never queued behind requests for the cluster's
        # connection limit, so a pool busy with long streams is not checked "down".
        self._probes: aiohttp.ClientSession | None = None

    async def send(
        self, request: UpstreamRequest, where: str, connect_timeout: float
    ) -> UpstreamResponse:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        tls = self._tls
        session = self._session
        if request.probe:
            if self._probes is None:
                self._probes = plain_session()
            session = self._probes
        headers = request.headers
        if not any(name.lower() == "accept-encoding" for name in headers):
            headers = {**headers, "Accept-Encoding": ACCEPT_ENCODING}
        url = request.url
        if (
            "@" in url
            and any(name.lower() == "authorization" for name in request.headers)
            and urlsplit(url).username is not None
        ):
            # aiohttp refuses to send a URL's user:password beside an Authorization header
            # (ValueError): the header, the client's own (forward_authorization), wins as the
            # lean client lets it.
            url = str(URL(url, encoded=True).with_user(None))
        with map_errors(where):
            response = await session.request(
                request.method,
                url,
                data=request.body or None,
                headers=headers,
                allow_redirects=False,
                auto_decompress=False,  # AiohttpResponse inflates, checking the stream ends
                timeout=timeout,
                ssl=True if tls is None else tls.context,
                server_hostname=None if tls is None else tls.server_hostname,
                trace_request_ctx=request,  # _queued marks the wait for a free connection
            )
        return AiohttpResponse(response, where)

    async def close(self) -> None:
        await self._session.close()
        if self._probes is not None:
            await self._probes.close()


def poster(
    session: aiohttp.ClientSession, timeout_s: float = 30.0, tls: ClientTls | None = None
) -> Callable[[str, bytes, Mapping[str, str]], Awaitable[tuple[int, bytes]]]:
    """A one-shot POST (status, body) over `session`, errors mapped like every upstream call:
    what the spool's drainer uploads batches with."""

    async def post(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        transport = HttpTransport(session, tls)
        async with asyncio.timeout(timeout_s):
            response = await transport.send(
                UpstreamRequest("POST", url, headers, body), "collector", timeout_s
            )
            return response.status, await response.read(16 * 1024 * 1024)

    return post


def plain_session() -> aiohttp.ClientSession:
    """A session with the same hygiene as the clusters' (no cookies, no redirects followed);
    TLS options travel with each request (an HttpTransport's ClientTls)."""
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",)
    )


def session_for(cluster: ClusterSettings) -> aiohttp.ClientSession:
    # No TLS context here: HttpTransport passes its ClientTls's with every request.
    connector = aiohttp.TCPConnector(
        limit=cluster.max_connections,
        enable_cleanup_closed=True,
        # As the lean client's pool (pool.KEEPALIVE_S): below common servers' 5 s idle close.
        keepalive_timeout=4.0,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # No cookies: upstream state must never leak from one client's request into another's.
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent",),
        trace_configs=[_queued()],
    )


def _queued() -> aiohttp.TraceConfig:
    """Marks an UpstreamRequest `queued` while it waits for the connector's limit, as the
    lean client does: a try that times out then was held up by us, not the upstream."""

    async def mark(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: object
    ) -> None:
        request = context.trace_request_ctx
        if isinstance(request, UpstreamRequest):
            request.queued = isinstance(params, aiohttp.TraceConnectionQueuedStartParams)

    trace = aiohttp.TraceConfig()
    trace.on_connection_queued_start.append(mark)
    trace.on_connection_queued_end.append(mark)
    return trace


@contextlib.contextmanager
def map_errors(where: str) -> Iterator[None]:
    try:
        yield
    except TimeoutError:
        raise UpstreamTimeout(f"{where}: timed out") from None
    except aiohttp.ClientSSLError:
        # Unknown CA, wrong name, expired, client certificate refused: no request was sent.
        raise UpstreamTlsFailed(f"{where}: TLS handshake failed") from None
    except aiohttp.ClientConnectorError:
        raise ConnectFailed(f"{where}: connection failed") from None
    except aiohttp.ClientOSError as exc:
        # TLS 1.3 ends the handshake before the server checks the client's certificate: its
        # refusal arrives as an alert on the first read, or (the alert lost) a plain reset.
        if isinstance(exc.__cause__, ssl.SSLError):
            raise UpstreamTlsFailed(f"{where}: TLS refused by the server") from None
        raise UpstreamReset(f"{where}: connection reset") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
        raise UpstreamReset(f"{where}: connection reset") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"{where}: {type(exc).__name__}") from None
    except asyncio.IncompleteReadError:
        raise UpstreamReset(f"{where}: response ended early") from None
