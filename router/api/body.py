"""Read a request body within the site's limits: never past `server.max_body_bytes` (413 from a
declared length before a byte is read), never slower than `limits.body_timeout_s` plus the
length at `limits.body_min_rate_bytes_per_s` (408), and a compressed body never inflating more
than `limits.max_inflate_ratio` times (413): aiohttp inflates gzip/deflate/br as it reads."""

from __future__ import annotations

import asyncio

from aiohttp import HttpVersion11, web
from aiohttp.web_protocol import RequestPayloadError

from router.api.errors import error_response
from router.api.state import SETTINGS
from router.errors import MalformedBody, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from router.listener import CONTENT_CODINGS, UNSUPPORTED_CODING, GuardedHandler

# Small bodies may inflate as much as they like: a 1 KiB gzip of a repetitive request is fine.
INFLATE_FLOOR_BYTES = 1024 * 1024


def check_length(request: web.Request) -> None:
    """413 from the declared length, before a byte of the body is read."""
    limit = request.app[SETTINGS].server.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit}")


async def expect_within_limit(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` (curl sends it for large uploads): a declared length over the
    limit is refused before the client is invited to send the body, not after."""
    try:
        check_length(request)
    except PayloadTooLarge as exc:
        return error_response(exc, request)
    # From here what aiohttp's default expect handler does: HTTP/1.0 has no 100 Continue.
    if request.version != HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() != "100-continue":
        return web.json_response({"error": "unsupported Expect header"}, status=417)
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
    return None


async def read_body(request: web.Request) -> bytes:
    check_length(request)
    settings = request.app[SETTINGS]
    cap, limits = settings.server.max_body_bytes, settings.limits
    content = request.content
    coding = request.headers.get("Content-Encoding")
    if coding is not None and coding.lower() not in CONTENT_CODINGS:
        raise UnsupportedMediaType(UNSUPPORTED_CODING)
    encoded = coding is not None
    if content.is_eof() and not encoded:
        # All of it arrived with the headers (the common small request): nothing to wait
        # for, so no deadline to arm.
        body = content.read_nowait()
        if len(body) > cap:
            raise PayloadTooLarge(f"request body exceeds the limit of {cap} bytes")
        return body
    loop = asyncio.get_running_loop()
    started = loop.time()
    allowance = limits.body_timeout_s + (request.content_length or 0) / (
        limits.body_min_rate_bytes_per_s
    )
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(allowance) as deadline:
            while chunk := await content.readany():
                size += len(chunk)
                if size > cap:
                    raise PayloadTooLarge(f"request body exceeds the limit of {cap} bytes")
                if encoded and size > INFLATE_FLOOR_BYTES:
                    _check_inflation(size, content.total_compressed_bytes, limits.max_inflate_ratio)
                chunks.append(chunk)
                # A chunked body declares no length: its allowance grows with what arrived.
                grown = size / limits.body_min_rate_bytes_per_s + limits.body_timeout_s
                if grown > allowance:
                    allowance = grown
                    deadline.reschedule(started + allowance)
    except RequestPayloadError:
        # aiohttp inflates as it reads: a body its Content-Encoding cannot decode (or a cut
        # chunked one) is the client's error, not a 500; its message would quote nothing useful.
        problem = "does not decode as its Content-Encoding says" if encoded else "is malformed"
        raise MalformedBody(f"request body {problem}") from None
    except TimeoutError:
        if isinstance(request.protocol, GuardedHandler):
            request.protocol.stop_lingering()
        raise RequestTimeout(
            f"request body did not arrive within {allowance:.0f} s (limits.body_timeout_s)"
        ) from None
    return b"".join(chunks)


def _check_inflation(size: int, compressed: int | None, ratio: float) -> None:
    if compressed and size > ratio * compressed:
        raise PayloadTooLarge(
            f"compressed request body inflates more than {ratio:g} times (limits.max_inflate_ratio)"
        )
