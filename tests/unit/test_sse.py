"""router/sse.py: which whole SSE events end an OpenAI-style stream."""

from __future__ import annotations

import pytest

from router.sse import ends_with_done


@pytest.mark.parametrize(
    "events",
    [
        b"data: [DONE]\n\n",
        b'data: {"choices": []}\n\ndata: [DONE]\n\n',
        b"data:[DONE]\r\n\r\n",
        b"data: [DONE] \r\r",
    ],
)
def test_a_done_event_last_ends_the_stream(events: bytes) -> None:
    """`data: [DONE]` as the last event, in any of SSE's line endings, ends the stream."""
    assert ends_with_done(events)


@pytest.mark.parametrize(
    "events",
    [
        b'data: {"choices": []}\n\n',
        b'data: [DONE]\n\ndata: {"choices": []}\n\n',
        b'data: {"text": "[DONE]"}\n\n',
        b": [DONE]\n\n",
        b"",
    ],
)
def test_anything_else_does_not(events: bytes) -> None:
    """An event after [DONE], [DONE] inside a payload or a comment, or nothing: not the end."""
    assert not ends_with_done(events)
