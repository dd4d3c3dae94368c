"""Whether a non-stream answer is read whole or relayed as it arrives, decided on its first
bytes within the try (so a failure before any byte reaches the client is still retried).

A short answer (its Content-Length at most `over_bytes`, or one that ends within them) is read
whole as always: it may be retried, rehydrated, cached, compressed in one go. A longer one that
nothing needs whole (`allows`) is handed back open: its first bytes, and the rest to relay.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from router.errors import UpstreamResponseTooLarge
from router.upstreams.client import UpstreamResponse


@dataclass(frozen=True, slots=True)
class Relay:
    """A request whose answer may be relayed: over `over_bytes`, when `allows` (its status and
    headers) says nothing needs it whole."""

    over_bytes: int
    allows: Callable[[int, CIMultiDictProxy[str]], bool]


@dataclass(slots=True)
class Opened:
    """What a try read of the body: all of it (`body`), or its first bytes and the rest."""

    body: bytes | None
    head: bytes | None = None
    rest: AsyncIterator[bytes] | None = None


def declared_length(headers: CIMultiDictProxy[str]) -> int | None:
    raw = headers.get("Content-Length", "").strip()
    return int(raw) if raw.isascii() and raw.isdecimal() else None


async def read_or_open(
    response: UpstreamResponse,
    relay: Relay,
    limit: int,
    start: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]],
    where: str,
) -> Opened:
    """`start` wraps the body's chunks (each within the idle timeout, the cluster's place held
    until they end); only called when the answer may be relayed."""
    length = declared_length(response.headers)
    over = min(relay.over_bytes, limit)
    if (length is not None and length <= over) or not relay.allows(
        response.status, response.headers
    ):
        return Opened(await response.read(limit))
    if length is not None and length > limit:  # refused before a byte is read, as `read` does
        response.abort()
        raise _too_large(where, limit)
    rest = start(response.chunks())
    prefix = bytearray()
    try:
        # A declared length over the bar starts the relay with the first chunk; an undeclared
        # one is read up to the bar: most such answers are short and keep the whole way.
        bar = 0 if length is not None else over
        async for chunk in rest:
            prefix += chunk
            if len(prefix) > limit:
                raise _too_large(where, limit)
            if len(prefix) > bar:
                return Opened(None, bytes(prefix), rest)
    except BaseException:
        response.abort()  # half read: never reused
        if isinstance(rest, AsyncGenerator):
            await rest.aclose()
        raise
    return Opened(bytes(prefix))  # it ended within the bar: a short answer after all


def _too_large(where: str, limit: int) -> UpstreamResponseTooLarge:
    return UpstreamResponseTooLarge(f"{where}: response larger than {limit} bytes")
