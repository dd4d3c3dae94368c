"""OpenAI-style SSE streams as the router reads and writes them: their end (as the relay and
the audit trail see it), their events' data (as a spool sample holds them), where the last
whole event ends (the relay passes on whole events), and the error event that ends a broken
stream."""

from __future__ import annotations

import re
from collections.abc import Iterator

import orjson

from router.errors import RouterError

_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
# A line ends at CRLF, LF or a bare CR (the SSE grammar); not at the other line breaks
# str.splitlines knows, which a JSON string may hold raw (U+2028).
_LINE_END = re.compile(rb"\r\n|\r|\n")
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


def data_payloads(stream: bytes) -> Iterator[bytes]:
    """Each event's data: its `data` lines joined with LF, as an SSE client reads them."""
    lines: list[bytes] = []
    for line in _LINE_END.split(stream):
        if not line:
            if lines:
                yield b"\n".join(lines)
                lines = []
            continue
        name, _, value = line.partition(b":")
        if name == b"data":  # `data` alone is a field too, with an empty value
            lines.append(value[1:] if value.startswith(b" ") else value)
    if lines:  # a last event without its empty line: a clean end still ends it
        yield b"\n".join(lines)


_EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")  # an empty line, in any of SSE's line endings


def events_end(data: bytes | bytearray, start: int = 0) -> int:
    """Where the last complete SSE event in `data` ends (0: none complete yet), looking for
    its end from `start` on."""
    end = 0
    for separator in _EVENT_ENDS:
        at = data.rfind(separator, start)
        if at >= 0:
            end = max(end, at + len(separator))
    return end


def sse_error_event(error: RouterError) -> bytes:
    """An OpenAI-style error event: the openai SDK raises APIError when it reads one."""
    doc = {
        "error": {
            "message": error.message,
            "type": "server_error",
            "param": None,
            "code": error.code,
        }
    }
    return b"data: " + orjson.dumps(doc) + b"\n\n"
