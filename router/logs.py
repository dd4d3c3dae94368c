"""Logging set-up, including aiohttp's own loggers, which would otherwise print request bytes."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _RedactAiohttp(logging.Filter):
    """aiohttp.server logs the raw bytes of requests it rejects (up to ~8 KB); keep only what
    kind of error it was."""

    def filter(self, record: logging.LogRecord) -> bool:
        kind = type(record.exc_info[1]).__name__ if record.exc_info and record.exc_info[1] else ""
        record.msg = f"connection error{': ' + kind if kind else ''}"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.internal"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactAiohttp) for f in logger.filters):
            logger.addFilter(_RedactAiohttp())
    # The access log quotes request lines, whose query strings can carry personal data.
    logging.getLogger("aiohttp.access").disabled = True
