"""The lean upstream client (router/upstreams/h1.py, pool.py) against a raw-socket server on
127.0.0.1 that answers each request with scripted bytes: framing, keep-alive and error edges.
Every test runs on asyncio and on uvloop (this folder's conftest)."""

from __future__ import annotations

import asyncio
import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import brotli
import pytest
import uvloop

from router.errors import ConnectFailed, UnforwardableHeader, UpstreamError, UpstreamReset
from router.upstreams import pool
from router.upstreams.client import UpstreamRequest
from router.upstreams.pool import H1Transport

LIMIT_S = 5.0


class Close(bytes):
    """An answer after which the server closes the connection."""


class Scripted:
    """Reads each request (head and Content-Length body) and writes the next scripted answer;
    an answer of None closes the connection, b"" answers nothing. Records connections and
    requests."""

    def __init__(self, *answers: bytes | None) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0) if self.answers else None
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if isinstance(answer, Close):
                    return
        finally:
            self.open_now -= 1
            self.closed.set()
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[Scripted, str]]:
    scripted = Scripted()
    listener = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    yield scripted, f"http://127.0.0.1:{port}"
    listener.close()


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def get(transport: H1Transport, url: str, method: str = "GET", body: bytes = b"") -> bytes:
    async with asyncio.timeout(LIMIT_S):
        response = await transport.send(UpstreamRequest(method, url, {}, body), "test", 1.0)
        return await response.read(1024)


async def test_keep_alive_reuses_one_connection(server: tuple[Scripted, str]) -> None:
    """Two exchanges read to the end share one connection."""
    scripted, url = server
    scripted.answers = [ok(b"one"), ok(b"two")]
    transport = H1Transport(4)
    assert await get(transport, url + "/a") == b"one"
    assert await get(transport, url + "/b", "POST", b"{}") == b"two"
    assert scripted.connections == 1
    assert scripted.requests[1].startswith(b"POST /b HTTP/1.1\r\n")
    assert b"Content-Length: 2\r\n" in scripted.requests[1]
    await transport.close()


async def test_connection_close_is_not_reused(server: tuple[Scripted, str]) -> None:
    """An answer with Connection: close sends the next request on a new connection."""
    scripted, url = server
    scripted.answers = [ok(b"one", b"Connection: close\r\n"), None]
    transport = H1Transport(4)
    assert await get(transport, url) == b"one"
    scripted.answers = [ok(b"two")]
    assert await get(transport, url) == b"two"
    assert scripted.connections == 2
    await transport.close()


async def test_stale_keep_alive_is_retried_on_a_fresh_connection(
    server: tuple[Scripted, str],
) -> None:
    """A pooled connection the upstream closed silently costs no error: a new one is opened."""
    scripted, url = server
    scripted.answers = [ok(b"one"), None, ok(b"two")]
    transport = H1Transport(4)
    assert await get(transport, url) == b"one"
    # The pooled connection's server side closes on the next request, answering nothing.
    assert await get(transport, url) == b"two"
    assert scripted.connections == 2
    await transport.close()


async def test_stale_keep_alive_is_not_retried_for_a_post(server: tuple[Scripted, str]) -> None:
    """A POST the upstream may have acted on is not sent twice: the reset is reported."""
    scripted, url = server
    scripted.answers = [ok(b"one"), None, ok(b"two")]
    transport = H1Transport(4)
    assert await get(transport, url, "POST", b"{}") == b"one"
    with pytest.raises(UpstreamReset):
        await get(transport, url, "POST", b"{}")
    assert scripted.connections == 1
    await transport.close()


async def test_chunked_with_extensions(server: tuple[Scripted, str]) -> None:
    """Chunk extensions are ignored and the chunks joined."""
    scripted, url = server
    scripted.answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;name=value\r\nhel\r\n2;x\r\nlo\r\n0\r\n\r\n",
        ok(b"next"),
    ]
    transport = H1Transport(4)
    assert await get(transport, url) == b"hello"
    assert await get(transport, url) == b"next"
    assert scripted.connections == 1
    await transport.close()


async def test_truncated_body_is_a_reset(server: tuple[Scripted, str]) -> None:
    """A body shorter than its Content-Length is an aborted answer, not a short one."""
    scripted, url = server
    scripted.answers = [Close(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")]
    transport = H1Transport(4)
    with pytest.raises(UpstreamReset):
        await get(transport, url)
    await transport.close()


async def test_truncated_chunked_stream_is_a_reset_after_the_first_chunk(
    server: tuple[Scripted, str],
) -> None:
    """A stream cut mid-way yields what arrived, then raises UpstreamReset."""
    scripted, url = server
    scripted.answers = [
        Close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    ]
    transport = H1Transport(4)
    async with asyncio.timeout(LIMIT_S):
        response = await transport.send(UpstreamRequest("GET", url, {}, b""), "test", 1.0)
        got: list[bytes] = []

        async def drain() -> None:
            async for chunk in response.chunks():
                got.append(chunk)

        with pytest.raises(UpstreamReset):
            await drain()
    assert got == [b"first"]
    await transport.close()


async def test_errors_name_the_exchange_not_the_connections_first_user(
    server: tuple[Scripted, str],
) -> None:
    """A pooled connection opened by a health check, then cut mid-stream while carrying a
    request: the error names the request's upstream, not 'health check'."""
    scripted, url = server
    scripted.answers = [
        ok(b"up"),
        Close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"),
    ]
    transport = H1Transport(4)
    async with asyncio.timeout(LIMIT_S):
        probe = UpstreamRequest("GET", url, {}, b"", probe=True)
        assert await (await transport.send(probe, "health check", 1.0)).read(100) == b"up"
        request = UpstreamRequest("GET", url, {}, b"")
        response = await transport.send(request, "cluster c endpoint 0", 1.0)
        with pytest.raises(UpstreamReset) as caught:
            async for _ in response.chunks():
                pass
    assert scripted.connections == 1
    assert caught.value.message.startswith("cluster c endpoint 0:")
    await transport.close()


async def test_utf8_header_values_are_read_as_utf8(server: tuple[Scripted, str]) -> None:
    """An upstream's UTF-8 header value is read as the text it is (aiohttp's server writes
    header text as UTF-8, so latin-1 here would turn café into cafÃ© for the client)."""
    scripted, url = server
    scripted.answers = [ok(b"x", "X-Note: café\r\n".encode())]
    transport = H1Transport(4)
    async with asyncio.timeout(LIMIT_S):
        response = await transport.send(UpstreamRequest("GET", url, {}, b""), "test", 1.0)
        assert response.headers["X-Note"] == "café"
        await response.read(10)
    await transport.close()


async def test_interim_1xx_is_skipped(server: tuple[Scripted, str]) -> None:
    """100 Continue and 103 Early Hints before the answer are not the answer."""
    scripted, url = server
    scripted.answers = [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"real")
    ]
    transport = H1Transport(4)
    async with asyncio.timeout(LIMIT_S):
        response = await transport.send(UpstreamRequest("GET", url, {}, b""), "test", 1.0)
        assert response.status == 200
        assert "Link" not in response.headers
        assert await response.read(100) == b"real"
    await transport.close()


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_204_and_304_have_no_body_and_keep_the_connection(
    server: tuple[Scripted, str], status: bytes
) -> None:
    """204 and 304 end at their headers; the connection carries the next exchange."""
    scripted, url = server
    scripted.answers = [b"HTTP/1.1 " + status + b"\r\nETag: x\r\n\r\n", ok(b"next")]
    transport = H1Transport(4)
    assert await get(transport, url) == b""
    assert await get(transport, url) == b"next"
    assert scripted.connections == 1
    await transport.close()


async def test_head_ends_at_its_headers(server: tuple[Scripted, str]) -> None:
    """A HEAD answer's Content-Length announces a body that never comes."""
    scripted, url = server
    scripted.answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"]
    transport = H1Transport(4)
    assert await get(transport, url, "HEAD") == b""
    await transport.close()


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 30\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\nContent-Encoding: gzip\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 30\r\n\r\n"),
    ],
    ids=["head", "204", "empty-200", "head-br"],
)
async def test_bodiless_gzip_answer_is_empty_not_cut_short(
    server: tuple[Scripted, str], method: str, answer: bytes
) -> None:
    """An answer without a body that names gzip (a HEAD mirrors its GET's headers) is an
    empty body, not a compressed stream that 'ended early'."""
    scripted, url = server
    scripted.answers = [answer]
    transport = H1Transport(4)
    assert await get(transport, url, method) == b""
    await transport.close()


async def test_oversized_headers_are_refused(server: tuple[Scripted, str]) -> None:
    """Headers past 64 KiB are an error, not an unbounded buffer."""
    scripted, url = server
    scripted.answers = [b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n"]
    transport = H1Transport(4)
    with pytest.raises(UpstreamError, match="too large"):
        await get(transport, url)
    await transport.close()


async def test_malformed_response_is_an_error(server: tuple[Scripted, str]) -> None:
    """Bytes that are not HTTP/1.1 are an UpstreamError."""
    scripted, url = server
    scripted.answers = [b"SSH-2.0-OpenSSH\r\n\r\n"]
    transport = H1Transport(4)
    with pytest.raises(UpstreamError, match="malformed"):
        await get(transport, url)
    await transport.close()


async def test_gzip_answer_is_inflated(server: tuple[Scripted, str]) -> None:
    """A gzip-encoded answer is read inflated, as aiohttp's auto_decompress does."""
    scripted, url = server
    scripted.answers = [ok(gzip.compress(b'{"a": 1}'), b"Content-Encoding: gzip\r\n")]
    transport = H1Transport(4)
    assert await get(transport, url) == b'{"a": 1}'
    await transport.close()


async def test_gzip_bomb_is_refused_before_it_is_inflated_whole(
    server: tuple[Scripted, str],
) -> None:
    """A 200 KiB gzip body that inflates to 200 MiB, read with a 1 MiB limit: refused as too
    large, having inflated little more than the limit (the old code inflated each read
    buffer whole, hundreds of MiB in one step, before the limit was looked at)."""
    scripted, url = server
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join(squeeze.compress(bytes(1 << 20)) for _ in range(200)) + squeeze.flush()
    scripted.answers = [ok(bomb, b"Content-Encoding: gzip\r\n")]
    transport = H1Transport(4)
    tracemalloc.start()
    try:
        async with asyncio.timeout(LIMIT_S):
            response = await transport.send(UpstreamRequest("GET", url, {}, b""), "test", 1.0)
            with pytest.raises(UpstreamError, match="larger than"):
                await response.read(1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    await transport.close()


async def test_raw_deflate_answer_is_inflated(server: tuple[Scripted, str]) -> None:
    """`deflate` sent without its zlib wrapper (a common server mistake, which aiohttp
    accepts too) is inflated all the same."""
    scripted, url = server
    squeeze = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = squeeze.compress(b'{"a": 1}') + squeeze.flush()
    scripted.answers = [ok(raw, b"Content-Encoding: deflate\r\n")]
    transport = H1Transport(4)
    assert await get(transport, url) == b'{"a": 1}'
    await transport.close()


async def test_br_answer_is_inflated(server: tuple[Scripted, str]) -> None:
    """br is offered (`Accept-Encoding: gzip, deflate, br`), and an answer in it is inflated."""
    scripted, url = server
    scripted.answers = [ok(brotli.compress(b'{"a": 1}'), b"Content-Encoding: br\r\n")]
    transport = H1Transport(4)
    assert await get(transport, url) == b'{"a": 1}'
    assert b"Accept-Encoding: gzip, deflate, br\r\n" in scripted.requests[-1]
    await transport.close()


async def test_encoding_not_asked_for_is_an_error(server: tuple[Scripted, str]) -> None:
    """A body in an encoding we never offered (zstd) is an error, never relayed as if plain."""
    scripted, url = server
    scripted.answers = [ok(b"(\xb5/\xfd zstd", b"Content-Encoding: zstd\r\n")]
    transport = H1Transport(4)
    with pytest.raises(UpstreamError, match="encoding"):
        await get(transport, url)
    await transport.close()


async def test_unread_body_closes_the_connection(server: tuple[Scripted, str]) -> None:
    """An aborted answer's connection is closed, never pooled with bytes pending."""
    scripted, url = server
    scripted.answers = [ok(b"unread"), ok(b"two")]
    transport = H1Transport(4)
    async with asyncio.timeout(LIMIT_S):
        response = await transport.send(UpstreamRequest("GET", url, {}, b""), "test", 1.0)
        response.abort()
        await scripted.closed.wait()
    scripted.answers = [ok(b"two")]
    assert await get(transport, url) == b"two"
    assert scripted.connections == 2
    await transport.close()


async def test_cancelled_exchange_closes_the_connection(server: tuple[Scripted, str]) -> None:
    """A request cancelled while waiting (the client went away) closes its connection."""
    scripted, url = server
    scripted.answers = [b""]  # no answer; the server waits for more on the connection
    transport = H1Transport(4)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await transport.send(UpstreamRequest("GET", url, {}, b""), "test", 1.0)
    async with asyncio.timeout(LIMIT_S):
        await scripted.closed.wait()
    await transport.close()


async def test_stream_yields_before_the_end(server: tuple[Scripted, str]) -> None:
    """The first chunk is readable while the upstream still holds the rest."""
    scripted, url = server
    scripted.answers = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"]
    transport = H1Transport(4)
    async with asyncio.timeout(LIMIT_S):
        response = await transport.send(UpstreamRequest("GET", url, {}, b""), "test", 1.0)
        chunks = response.chunks()
        assert await anext(chunks) == b"first"
        response.abort()
    await transport.close()


async def test_max_connections_bounds_exchanges(server: tuple[Scripted, str]) -> None:
    """With max_connections 1, a second exchange waits for the first to be released."""
    scripted, url = server
    scripted.answers = [ok(b"1"), ok(b"2"), ok(b"3")]
    transport = H1Transport(1)
    async with asyncio.timeout(LIMIT_S):
        results = await asyncio.gather(*(get(transport, url) for _ in range(3)))
    assert sorted(results) == [b"1", b"2", b"3"]
    assert scripted.most_open == 1
    await transport.close()


async def test_line_break_in_a_header_is_refused(server: tuple[Scripted, str]) -> None:
    """A header value with CR LF would smuggle a header: refused before anything is sent,
    as the request's fault (400), not an upstream failure."""
    scripted, url = server
    transport = H1Transport(4)
    request = UpstreamRequest("GET", url, {"X-A": "1\r\nX-Injected: 1"}, b"")
    with pytest.raises(UnforwardableHeader, match="line break"):
        await transport.send(request, "test", 1.0)
    assert scripted.requests == []
    await transport.close()


async def test_idle_connection_is_closed_after_the_keep_alive_time(
    server: tuple[Scripted, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection nobody used for KEEPALIVE_S is closed, not held forever."""
    monkeypatch.setattr(pool, "KEEPALIVE_S", 0.05)
    scripted, url = server
    scripted.answers = [ok(b"one")]
    transport = H1Transport(4)
    assert await get(transport, url) == b"one"
    async with asyncio.timeout(LIMIT_S):
        await scripted.closed.wait()
    assert scripted.open_now == 0
    await transport.close()


async def test_a_connection_idle_too_long_is_not_reused(server: tuple[Scripted, str]) -> None:
    """A pooled connection idle for KEEPALIVE_S or more (before the sweep closed it) is not
    written to again: the upstream may be closing it; a new connection carries the request."""
    scripted, url = server
    scripted.answers = [ok(b"one"), ok(b"two")]
    transport = H1Transport(4)
    assert await get(transport, url) == b"one"
    for idle in transport._idle.values():
        for connection in idle:
            connection.idle_since -= pool.KEEPALIVE_S + 1
    assert await get(transport, url) == b"two"
    assert scripted.connections == 2
    await transport.close()


async def test_refused_connection_is_connect_failed() -> None:
    """Nothing listening is ConnectFailed."""
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    transport = H1Transport(4)
    with pytest.raises(ConnectFailed):
        await get(transport, f"http://127.0.0.1:{port}")
    await transport.close()


async def test_the_folder_runs_each_test_on_both_loops(request: pytest.FixtureRequest) -> None:
    """The loop a test runs on is the one its parameter names (uvloop's is its own class)."""
    on_uvloop = isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert on_uvloop == request.node.callspec.id.endswith("uvloop")


STRAY_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


@pytest.mark.parametrize("apart", [False, True])
async def test_bytes_after_the_answer_close_the_connection(
    server: tuple[Scripted, str], apart: bool
) -> None:
    """Bytes an upstream sends after its answer ended (a stray second answer, here split
    across two writes) are no answer to the next request: the connection is closed, and the
    next exchange is not handed the stray body (a desync) on it."""
    scripted, url = server
    transport = H1Transport(4)
    if apart:
        scripted.answers = [ok(b"one")]
        assert await get(transport, url) == b"one"
        # The stray head arrives while the connection sits idle in the pool.
        (connection,) = [c for idle in transport._idle.values() for c in idle]
        assert connection.transport is not None
        connection.data_received(STRAY_HEAD)
    else:
        scripted.answers = [ok(b"one") + STRAY_HEAD]
        assert await get(transport, url) == b"one"
        await asyncio.sleep(0.05)  # the stray head may arrive after the answer was read
    scripted.answers = [ok(b"two")]
    # On the same connection, the first bytes of this answer would be the stray one's body.
    assert await get(transport, url) == b"two"
    assert scripted.connections == 2
    await transport.close()
