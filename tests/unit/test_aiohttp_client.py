"""The aiohttp upstream client (`client: aiohttp`, router/upstreams/client.py) against a raw
server on 127.0.0.1 that writes its answer in pieces: a body that arrives in several reads is
read whole, a compressed one is inflated, and one cut short is an error, never a short 200."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import pytest

from router.errors import UpstreamError, UpstreamReset
from router.settings import ClusterSettings
from router.upstreams.client import HttpTransport, UpstreamRequest, session_for

LIMIT_S = 5.0
BODY = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}'


class Pieces:
    """Answers every request with `head`, then each of `pieces` after a pause, then closes
    when `close` is set."""

    def __init__(self) -> None:
        self.head = b""
        self.pieces: list[bytes] = []
        self.close = False
        self.hung_up = asyncio.Event()  # the client closed its connection

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.head)
            for piece in self.pieces:
                await writer.drain()
                await asyncio.sleep(0.02)  # each piece its own read on the client side
                writer.write(piece)
            await writer.drain()
            if not self.close:
                await reader.read()  # keep-alive: the client hangs up
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.hung_up.set()
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[Pieces, str]]:
    pieces = Pieces()
    listener = await asyncio.start_server(pieces.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    yield pieces, f"http://127.0.0.1:{port}"
    listener.close()


async def fetch(url: str, limit: int = 1 << 20) -> bytes:
    settings = ClusterSettings.model_validate(
        {"name": "c", "tier": "central", "endpoints": [{"url": url}], "client": "aiohttp"}
    )
    transport = HttpTransport(session_for(settings))
    try:
        async with asyncio.timeout(LIMIT_S):
            request = UpstreamRequest("POST", url + "/v1/chat/completions", {}, b"{}")
            response = await transport.send(request, "test", 1.0)
            return await response.read(limit)
    finally:
        await transport.close()


def chunked(*parts: bytes) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]


async def test_chunked_body_in_several_reads_is_read_whole(
    server: tuple[Pieces, str],
) -> None:
    """A chunked answer whose chunks arrive apart is the whole body, not its first read."""
    pieces, url = server
    pieces.head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    pieces.pieces = chunked(BODY[:10], BODY[10:30], BODY[30:])
    assert await fetch(url) == BODY


async def test_sized_body_in_several_reads_is_read_whole(server: tuple[Pieces, str]) -> None:
    """A Content-Length answer that arrives in pieces is read whole, not called cut short."""
    pieces, url = server
    pieces.head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    pieces.pieces = [BODY[:10], BODY[10:30], BODY[30:]]
    assert await fetch(url) == BODY


async def test_gzip_body_with_content_length_is_inflated(server: tuple[Pieces, str]) -> None:
    """Content-Length counts the compressed bytes: the inflated body is not 'ended early'."""
    pieces, url = server
    packed = gzip.compress(BODY)
    pieces.head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(
        packed
    )
    pieces.pieces = [packed[:5], packed[5:]]
    assert await fetch(url) == BODY


async def test_body_cut_short_is_a_reset(server: tuple[Pieces, str]) -> None:
    """Fewer bytes than Content-Length, then the connection closes: an error, not a body."""
    pieces, url = server
    pieces.head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(BODY) + 10)
    pieces.pieces = [BODY[:10], BODY[10:]]
    pieces.close = True
    with pytest.raises(UpstreamReset):
        await fetch(url)


async def test_body_over_the_limit_is_refused(server: tuple[Pieces, str]) -> None:
    """A chunked body that grows past the limit is an error however it arrives."""
    pieces, url = server
    pieces.head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    pieces.pieces = chunked(BODY[:30], BODY[30:])
    with pytest.raises(UpstreamError, match="larger than"):
        await fetch(url, limit=40)


def stalled_transport(pieces: Pieces, url: str) -> HttpTransport:
    """A transport to a server that sends the head and a first piece of a longer body, then
    stalls with the connection open."""
    pieces.head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(BODY) + 10)
    pieces.pieces = [BODY[:10]]
    settings = ClusterSettings.model_validate(
        {"name": "c", "tier": "central", "endpoints": [{"url": url}], "client": "aiohttp"}
    )
    return HttpTransport(session_for(settings))


async def test_read_given_up_closes_the_connection(server: tuple[Pieces, str]) -> None:
    """A read cut by its deadline closes the connection at once, not when the response is
    collected: else a stalled upstream holds a socket and a pool slot per try given up."""
    pieces, url = server
    transport = stalled_transport(pieces, url)
    try:
        request = UpstreamRequest("POST", url + "/v1/chat/completions", {}, b"{}")
        response = await transport.send(request, "test", 1.0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await response.read(1 << 20)
        async with asyncio.timeout(LIMIT_S):
            await pieces.hung_up.wait()
        assert response.status == 200  # still held by its caller, and its connection closed
    finally:
        await transport.close()


async def test_stream_left_closes_the_connection(server: tuple[Pieces, str]) -> None:
    """A stream whose reader leaves after its first chunk closes the connection at once."""
    pieces, url = server
    transport = stalled_transport(pieces, url)
    try:
        request = UpstreamRequest("POST", url + "/v1/chat/completions", {}, b"{}")
        response = await transport.send(request, "test", 1.0)
        chunks = response.chunks()
        assert await anext(chunks) == BODY[:10]
        await chunks.aclose()
        async with asyncio.timeout(LIMIT_S):
            await pieces.hung_up.wait()
        assert response.status == 200
    finally:
        await transport.close()
