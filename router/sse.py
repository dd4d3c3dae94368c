"""The end of an OpenAI-style SSE stream, as both the relay and the audit trail see it."""

from __future__ import annotations

import re

import orjson

_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
# What an error event whose code is no plain name (upstream text) is recorded as.
UNNAMED_ERROR = "upstream_error"


def _last_line(events: bytes) -> bytes:
    """The last non-empty line, found from the end: chunks are relayed one by one, and only
    their end matters here (no copy of the rest)."""
    end = len(events)
    while end and events[end - 1] in b"\r\n":
        end -= 1
    start = max(events.rfind(b"\n", 0, end), events.rfind(b"\r", 0, end)) + 1
    return events[start:end]


def ends_with_done(events: bytes) -> bool:
    """Whether the last line of these whole SSE events is `data: [DONE]`: the stream's answer
    is complete (nothing follows it but the end of the body)."""
    last = _last_line(events)
    return last.startswith(b"data:") and last[5:].strip() == b"[DONE]"


def error_code(events: bytes) -> str | None:
    """The code of an OpenAI-style error event (`data: {"error": {...}}`) that is the last of
    these whole events, as a stable name (upstream text is never recorded as written); None
    when the last event is no error."""
    last = _last_line(events)
    if not last.startswith(b"data:") or b'"error"' not in last:
        return None
    try:
        doc = orjson.loads(last[5:])
    except orjson.JSONDecodeError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    return code if isinstance(code, str) and _CODE.fullmatch(code) else UNNAMED_ERROR
