"""The SSE relay's event framing (router.forwarding._relay): whole events pass on however the
upstream's bytes are cut, and no event grows past its cap."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router import forwarding
from router.errors import StreamBroken

STREAM = (
    b'data: {"a": 1}\n\ndata: {"b": 2}\r\n\r\n: comment\r\rdata: [DONE]\n\ndata: tail without end'
)


def forwarded(chunks: list[bytes]) -> Any:
    async def rest() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    response = SimpleNamespace(abort=lambda: None)
    return SimpleNamespace(first=b"", rest=rest(), response=response, release=lambda: None)


async def relayed(chunks: list[bytes]) -> list[bytes]:
    return [out async for out in forwarding._relay(forwarded(chunks))]


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12))
async def test_events_pass_whole_however_the_bytes_are_cut(points: list[int]) -> None:
    """Each piece relayed ends where an event ends (the last, unfinished one comes at the
    close), and together they are the stream byte for byte: a separator split across
    chunks is still found."""
    out = await relayed(cut(STREAM, points))
    assert b"".join(out) == STREAM
    for piece in out[:-1]:
        assert piece.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))
    assert out[-1] == b"data: tail without end"


async def test_an_event_past_the_cap_breaks_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event with no end in sight is cut at the cap with StreamBroken, after the events
    before it went out."""
    monkeypatch.setattr(forwarding, "MAX_EVENT_BYTES", 1000)
    out: list[bytes] = []

    async def drain() -> None:
        chunks = [b"data: 1\n\ndata: ", *[b"x" * 100] * 20]
        async for piece in forwarding._relay(forwarded(chunks)):
            out.append(piece)

    with pytest.raises(StreamBroken):
        await drain()
    assert out == [b"data: 1\n\n"]
