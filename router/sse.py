"""The end of an OpenAI-style SSE stream, as both the relay and the audit trail see it."""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def ends_with_done(events: bytes) -> bool:
    """Whether the last line of these whole SSE events is `data: [DONE]`: the stream's answer
    is complete (nothing follows it but the end of the body)."""
    last = _LINE_BREAK.split(events.rstrip(b"\r\n"))[-1]
    return last.startswith(b"data:") and last[5:].strip() == b"[DONE]"
