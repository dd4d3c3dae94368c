"""A streamed (SSE) answer kept for its spool sample: the bytes its client was sent, copied as
they pass and within a bound, then read back, once the stream ended whole, into the events the
sample holds.

The copy costs a list append per chunk on the stream's path; reading it back (and redacting it,
router.store_forward) waits until the last byte went out. A streamed answer's text arrives in
pieces, one per event, and a value split between two of them would be found in neither: each
choice's text is joined back whole, into the event that began it, before it is scanned.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import orjson

from router.sse import data_payloads

# Delta fields carrying model text, besides tool-call arguments (as router.redaction.rehydrate).
_TEXT_FIELDS = ("content", "reasoning", "reasoning_content", "refusal")


class StreamCopy:
    """The chunks a stream sent, while they stay within `limit` bytes in all: past it the copy
    is dropped (`over`), never kept as if it were the whole answer."""

    __slots__ = ("chunks", "ended", "limit", "over", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.over = False
        self.ended = False  # the source ran out: no error, no cut

    async def passing(self, source: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        """`source`'s chunks, copied as they pass on; closed, it closes `source` at once (the
        upstream connection waits for it)."""
        try:
            async for chunk in source:
                if not self.over:
                    self.size += len(chunk)
                    if self.size > self.limit:
                        self.over, self.chunks = True, []
                    else:
                        self.chunks.append(chunk)
                yield chunk
            self.ended = True
        finally:
            if isinstance(source, AsyncGenerator):
                await source.aclose()


def sampled_events(chunks: list[bytes]) -> list[Any] | None:
    """The stream's `data:` payloads (`[DONE]` left out), each parsed where it is JSON (its
    text otherwise), with each choice's streamed text joined whole; None for a stream that
    carries an error event (an upstream's, a chained router's): no complete answer."""
    events: list[Any] = []
    for payload in data_payloads(b"".join(chunks)):
        if not payload or payload.strip() == b"[DONE]":
            continue  # an empty data buffer is no event (the SSE grammar)
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            event = payload.decode("utf-8", "replace")
        if isinstance(event, dict) and "error" in event:
            return None
        events.append(event)
    _join_text(events)
    return events


def _join_text(events: list[Any]) -> None:
    """Each choice's text field (per field and tool call) made whole in the event that began
    it, and emptied in the later ones: the text the client assembled, scanned as one."""
    first: dict[tuple[int, str, int], tuple[dict[str, Any], str]] = {}
    for event in events:
        choices = event.get("choices") if isinstance(event, dict) else None
        for position, choice in enumerate(choices if isinstance(choices, list) else ()):
            if not isinstance(choice, dict):
                continue
            for key, container, name in _text_fields(choice, position):
                began = first.get(key)
                if began is None:
                    first[key] = (container, name)
                else:
                    owner, field = began
                    owner[field] += container[name]
                    container[name] = ""


def _text_fields(
    choice: dict[str, Any], position: int
) -> Iterator[tuple[tuple[int, str, int], dict[str, Any], str]]:
    """A choice's streamed text fields holding text: (key, the dict holding it, its name)."""
    index = choice.get("index", position)
    if not isinstance(index, int) or isinstance(index, bool):
        index = position
    if isinstance(choice.get("text"), str):
        yield (index, "text", 0), choice, "text"
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return
    for name in _TEXT_FIELDS:
        if isinstance(delta.get(name), str):
            yield (index, name, 0), delta, name
    calls = delta.get("tool_calls")
    for pos, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            slot = call.get("index", pos)
            slot = slot if isinstance(slot, int) and not isinstance(slot, bool) else pos
            yield (index, "tool", slot), function, "arguments"
