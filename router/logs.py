"""Logging set-up: one JSON object a line (or plain text), and aiohttp's own loggers held so
that no request bytes, query string or header value reaches a log.

- aiohttp.server / .web / .client / .internal / .websocket log raw bytes of rejected requests
  and exception messages that can quote a request: their records keep only the error's type.
- aiohttp.access's default format prints the request line with its query string and the
  Referer and User-Agent headers: only records from SafeAccessLogger (method, route template,
  status, duration) pass.
- Exceptions in our own records are reduced to type and innermost location: a message may
  quote the data that caused it. So are the event loop's (asyncio, uvloop), whose messages
  hold the failed task's repr, and the exception's within it.
"""

from __future__ import annotations

import logging
import sys
import time
from time import perf_counter
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from opentelemetry import trace

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_AIOHTTP_NOISY = (
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.websocket",
)
ACCESS_LOGGER = "aiohttp.access"
_FIELDS = ("method", "route", "status", "duration_ms", "trace_id", "span_id")
# RFC 9110's methods and PATCH: the access line names no other.
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
# When the app began a request, by perf_counter (set by the app's outermost middleware): the
# duration aiohttp hands the access log is by loop.time(), which moves in whole milliseconds
# under uvloop, so every fast request would log 0.000ms.
ACCESS_STARTED = web.RequestKey("access_started", float)
# The request's server span ids (trace, span) as hex, when tracing is on: the access line is
# written after the span stopped being current, and must still join its trace.
ACCESS_TRACE: web.RequestKey[tuple[str, str]] = web.RequestKey("access_trace", tuple)


class _RedactAiohttp(logging.Filter):
    """aiohttp.server logs the raw bytes of requests it rejects (up to ~8 KB); keep only what
    kind of error it was."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        kind = type(exc).__name__ if exc is not None else ""
        if _clients_fault(exc):
            # A malformed request is the client's doing: any client could flood an
            # error-level log (and the alerts on it) with them.
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            if not logging.getLogger(record.name).isEnabledFor(logging.WARNING):
                return False  # `logging.level: error` keeps them out
        record.msg = f"connection error{': ' + kind if kind else ''}"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def _clients_fault(exc: BaseException | None) -> bool:
    """A malformed request head, or a body its framing or Content-Encoding cannot decode
    (which aiohttp meets again, as RequestPayloadError, reading the rest of the body after the
    router's 400 went out)."""
    if isinstance(exc, HttpProcessingError):
        return 400 <= exc.code < 500
    return isinstance(exc, RequestPayloadError)


class _LoopErrorsByType(logging.Filter):
    """The event loop's own error records ("Task exception was never retrieved", "Exception in
    callback ...") carry the task's or callback's repr in their message, the exception's repr
    and arguments within it: keep only that the loop met one (its type and place are added as
    for any record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = "exception nothing handled in a task or callback"
            record.args = ()
            record.exc_text = None
            record.stack_info = None
        return True


class _OnlySafeAccess(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "safe_access", False) is True


class SafeAccessLogger(AbstractAccessLogger):
    """An access log line without the request line: the route's template (`/v2/models/{model}
    /infer`), never the path or query a client sent. Its duration by perf_counter from when
    the app took the request; aiohttp's own (`time`) for one refused before (a malformed one)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        template = _template(request)
        started = request.get(ACCESS_STARTED)
        if started is not None:
            time = perf_counter() - started
        # A method is any token to aiohttp's pure-Python parser (no C extension): a card number
        # sent as one would be written as it came.
        method = request.method if request.method in _METHODS else "(other)"
        trace = request.get(ACCESS_TRACE)
        self.logger.info(
            "%s %s %d %.3fms",  # the text format shows only the message: the duration too
            method,
            template,
            response.status,
            time * 1000,
            extra={
                "safe_access": True,
                "method": method,
                "route": template,
                "status": response.status,
                "duration_ms": round(time * 1000, 3),
                **({"trace_id": trace[0], "span_id": trace[1]} if trace else {}),
            },
        )


def _template(request: web.BaseRequest) -> str:
    """The route's template; "(unmatched)" for a request no route took, or one refused before
    routing (malformed: aiohttp asserts when its match_info, never set, is read)."""
    try:
        info = request.match_info  # type: ignore[attr-defined]
    except (AttributeError, AssertionError):
        return "(unmatched)"
    route = getattr(getattr(info, "route", None), "resource", None)
    return route.canonical if route is not None else "(unmatched)"


def access_log_options(enabled: bool) -> dict[str, Any]:
    """AppRunner's access-log arguments: ours, or none at all (the default costs nothing)."""
    if not enabled:
        return {"access_log": None}
    return {"access_log": logging.getLogger(ACCESS_LOGGER), "access_log_class": SafeAccessLogger}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info and record.exc_info[1] is not None:
            doc["exc_type"] = type(record.exc_info[1]).__name__
            doc["exc_where"] = _where(record.exc_info[1])
        span = trace.get_current_span().get_span_context()
        if span.is_valid:  # tracing on, inside a request: the line joins its trace
            doc["trace_id"] = format(span.trace_id, "032x")
            doc["span_id"] = format(span.span_id, "016x")
        return orjson.dumps(doc).decode()


class _TextFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return f"{type(ei[1]).__name__} at {_where(ei[1])}"


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "unknown"


def configure(level: str, fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TextFormatter(_TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _AIOHTTP_NOISY:
        _add_once(logging.getLogger(name), _RedactAiohttp)
    _add_once(logging.getLogger(ACCESS_LOGGER), _OnlySafeAccess)
    _add_once(logging.getLogger("asyncio"), _LoopErrorsByType)


def _add_once(logger: logging.Logger, kind: type[logging.Filter]) -> None:
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())
