"""An upstream answer in a Content-Encoding whose compressed body is cut short (its stream never
reaches its end, yet the HTTP framing ends cleanly: a matching Content-Length, or a chunked
terminator) or corrupt is an upstream failure with both upstream clients: a short answer a
clear 502, a relayed one a broken response, never a complete 200 with a shorter body. An
intact one passes byte for byte. Real aiohttp upstreams and the real router app on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import random
import zlib
from collections.abc import Callable
from pathlib import Path

import aiohttp
import brotli
import orjson
import pytest
from aiohttp import web

from router.testing import central_chat_cluster, router_in_front_of, serving

MODEL = "gpt-test"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
RELAY_OVER = 64 * 1024  # the router's relay_over_bytes here
SHORT = 8 * 1024  # an answer read whole
LONG = 512 * 1024  # an answer relayed: its compressed length too is over RELAY_OVER
CHUNK = 16 * 1024
LIMIT_S = 20.0

CODINGS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
}
CASES = [
    pytest.param(client, coding, id=f"{client}-{coding}")
    for client in ("h1", "aiohttp")
    for coding in CODINGS
]


def noise(size: int) -> bytes:
    """Text that does not compress much: the compressed body is about as long as it."""
    return random.Random(size).randbytes(size // 2).hex().encode()


class Encoded:
    """An upstream answering every chat request with `body` in `coding`, its compressed bytes
    first passed through `spoil`, sent with their Content-Length (`sized`) or chunked, in
    CHUNK pieces, the framing always ended cleanly."""

    def __init__(
        self, body: bytes, coding: str, spoil: Callable[[bytes], bytes], sized: bool
    ) -> None:
        self.body = body
        self.coding = coding
        self.encoded = spoil(CODINGS[coding](body))
        self.sized = sized
        self.requests = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.answer)
        return app

    async def answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.requests += 1
        headers = {"Content-Type": "application/octet-stream", "Content-Encoding": self.coding}
        if self.sized:
            headers["Content-Length"] = str(len(self.encoded))
        response = web.StreamResponse(headers=headers)
        if not self.sized:
            response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(self.encoded), CHUNK):
            await response.write(self.encoded[start : start + CHUNK])
        await response.write_eof()
        return response


async def router_for(
    stack: contextlib.AsyncExitStack, tmp_path: Path, upstream: Encoded, client: str
) -> str:
    url = await stack.enter_async_context(serving(upstream.app()))
    cluster = central_chat_cluster(
        url,
        MODEL,
        client=client,
        request_timeout_ms=5000,
        retry={"base_backoff_ms": 1, "max_backoff_ms": 5},
        relay_over_bytes=RELAY_OVER,
    )
    _, base = await router_in_front_of(stack, tmp_path, cluster)
    return base


async def post(
    url: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, type[BaseException] | None]:
    """POST a chat request asking for no content-coding; the status, the body bytes that
    came, and how reading them failed, if it did."""
    body = bytearray()
    error: type[BaseException] | None = None
    async with (
        asyncio.timeout(LIMIT_S),
        aiohttp.ClientSession(skip_auto_headers=("Accept-Encoding",)) as http,
        http.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers) as response,
    ):
        try:
            async for chunk in response.content.iter_any():
                body += chunk
        except aiohttp.ClientPayloadError as exc:
            error = type(exc)
        return response.status, bytes(body), error


def cut(encoded: bytes) -> bytes:
    return encoded[:-200]


def corrupt(encoded: bytes) -> bytes:
    """The middle bytes zeroed: not the stream the header announced."""
    middle = len(encoded) // 2
    return encoded[:middle] + bytes(64) + encoded[middle + 64 :]


SIZED = pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])


@pytest.mark.parametrize(("client", "coding"), CASES)
@pytest.mark.parametrize("size", [SHORT, LONG], ids=["short", "long"])
@SIZED
async def test_an_intact_compressed_answer_passes_byte_for_byte(
    stack: contextlib.AsyncExitStack,
    tmp_path: Path,
    client: str,
    coding: str,
    size: int,
    sized: bool,
) -> None:
    """A whole compressed answer, read whole or relayed, reaches the client inflated, byte for
    byte, with one upstream request."""
    upstream = Encoded(noise(size), coding, lambda encoded: encoded, sized)
    url = await router_for(stack, tmp_path, upstream, client)
    status, body, error = await post(url)
    assert (status, error) == (200, None)
    assert body == upstream.body
    assert upstream.requests == 1


@pytest.mark.parametrize(("client", "coding"), CASES)
@SIZED
async def test_a_short_answer_cut_short_is_a_clear_502(
    stack: contextlib.AsyncExitStack, tmp_path: Path, client: str, coding: str, sized: bool
) -> None:
    """A short answer whose compressed stream ends early is the 502 upstream_reset of any
    upstream answer cut short, never a 200 with a shorter body; retried as a reset is (the
    request is replayable: it has an Idempotency-Key)."""
    upstream = Encoded(noise(SHORT), coding, cut, sized)
    url = await router_for(stack, tmp_path, upstream, client)
    status, body, error = await post(url, {"Idempotency-Key": "k-1"})
    assert status == 502, body[:200]
    assert error is None
    assert orjson.loads(body)["error"]["code"] == "upstream_reset"
    assert upstream.requests == 3  # retry.max_attempts: a reset before any byte went out


# br carries no checksum: bytes zeroed in it may well decode, to other text.
@pytest.mark.parametrize(("client", "coding"), [c for c in CASES if "br" not in c.values])
async def test_a_short_corrupt_answer_is_a_clear_502(
    stack: contextlib.AsyncExitStack, tmp_path: Path, client: str, coding: str
) -> None:
    """A short answer whose compressed bytes do not decode is a 502 upstream_error."""
    upstream = Encoded(noise(SHORT), coding, corrupt, True)
    url = await router_for(stack, tmp_path, upstream, client)
    status, body, _ = await post(url)
    assert status == 502, body[:200]
    assert orjson.loads(body)["error"]["code"] == "upstream_error"


@pytest.mark.parametrize(("client", "coding"), CASES)
@SIZED
async def test_a_relayed_answer_cut_short_is_a_broken_answer(
    stack: contextlib.AsyncExitStack, tmp_path: Path, client: str, coding: str, sized: bool
) -> None:
    """A long answer whose compressed stream ends early, relayed already, reaches the client
    as a broken response (never a clean end) whose bytes are the answer's first ones; it is
    not retried once bytes went out."""
    upstream = Encoded(noise(LONG), coding, cut, sized)
    url = await router_for(stack, tmp_path, upstream, client)
    status, body, error = await post(url)
    assert status == 200, body[:200]
    assert error is aiohttp.ClientPayloadError
    assert len(body) < len(upstream.body)
    assert body == upstream.body[: len(body)]
    assert upstream.requests == 1


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
@pytest.mark.parametrize("size", [SHORT, LONG], ids=["short", "long"])
async def test_a_coding_never_asked_for_is_refused(
    stack: contextlib.AsyncExitStack, tmp_path: Path, client: str, size: int
) -> None:
    """An answer in zstd (offered by neither client) is a 502 upstream_error before a byte
    of it goes out, however long, never passed on as plain."""
    upstream = Encoded(noise(size), "gzip", lambda encoded: encoded, True)
    upstream.coding = "zstd"
    url = await router_for(stack, tmp_path, upstream, client)
    status, body, _ = await post(url)
    assert status == 502, body[:200]
    assert orjson.loads(body)["error"]["code"] == "upstream_error"


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
@pytest.mark.parametrize("size", [SHORT, LONG], ids=["short", "long"])
async def test_concatenated_gzip_members_are_the_whole_answer(
    stack: contextlib.AsyncExitStack, tmp_path: Path, client: str, size: int
) -> None:
    """A gzip answer of two members one after the other reaches the client as both, never as
    the first alone passed on as complete."""
    upstream = Encoded(noise(size), "gzip", lambda encoded: encoded, True)
    half = size // 2
    upstream.encoded = gzip.compress(upstream.body[:half]) + gzip.compress(upstream.body[half:])
    url = await router_for(stack, tmp_path, upstream, client)
    status, body, error = await post(url)
    assert (status, error) == (200, None)
    assert body == upstream.body


@pytest.mark.parametrize(("client", "coding"), [c for c in CASES if "br" not in c.id])
@pytest.mark.parametrize("trailing", [b"\n", bytes(4)], ids=["newline", "nul-padding"])
async def test_bytes_after_a_whole_stream_are_ignored(
    stack: contextlib.AsyncExitStack, tmp_path: Path, client: str, coding: str, trailing: bytes
) -> None:
    """A whole gzip or deflate answer followed by a newline or NUL padding (no further gzip
    member) reaches the client whole, as a browser reads it, with one upstream request."""
    upstream = Encoded(noise(SHORT), coding, lambda encoded: encoded + trailing, sized=True)
    url = await router_for(stack, tmp_path, upstream, client)
    status, body, error = await post(url)
    assert (status, error) == (200, None), body[:200]
    assert body == upstream.body
    assert upstream.requests == 1
