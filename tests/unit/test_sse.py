"""router/sse.py: which whole SSE events end an OpenAI-style stream."""

from __future__ import annotations

import pytest

from router.sse import ends_with_done, error_code


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


@pytest.mark.parametrize(
    ("events", "code"),
    [
        (b'data: {"error": {"code": "upstream_stream_broken"}}\n\n', "upstream_stream_broken"),
        (b'data: {"x": 1}\n\ndata: {"error": {"code": "shutting_down"}}\r\n\r\n', "shutting_down"),
        (b'data: {"error": {"code": "jane@example.com"}}\n\n', "upstream_error"),
        (b'data: {"error": {"message": "no code"}}\n\n', "upstream_error"),
        (b'data: {"error": "text"}\n\n', None),
        (b'data: {"error": {"code": "x"}}\n\ndata: [DONE]\n\n', None),
        (b'data: {"choices": [{"delta": {"content": "\\"error\\""}}]}\n\n', None),
        (b"data: {not json\n\n", None),
        (b"", None),
    ],
)
def test_the_code_of_a_last_error_event(events: bytes, code: str | None) -> None:
    """The last event's error code, as a plain name (other text: upstream_error); none when
    the last event is no error object."""
    assert error_code(events) == code
