"""Which line of a request head was too long: the request line (414) or a header (431), with
aiohttp's C parser and with its pure-Python one (AIOHTTP_NO_EXTENSIONS)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from aiohttp import http_parser
from aiohttp.http_exceptions import LineTooLong

from router.listener import _in_request_line

LIMIT = 100
LONG = b"q" * (LIMIT * 2)
HEADS = {
    "url": (b"GET /" + LONG + b" HTTP/1.1\r\nHost: x\r\n\r\n", True),
    "name": (b"GET / HTTP/1.1\r\nX-" + LONG + b": v\r\n\r\n", False),
    "value": (b"GET / HTTP/1.1\r\nX-Path: /" + LONG + b"\r\n\r\n", False),
    "unfinished url": (b"GET /" + LONG, True),
    "unfinished value": (b"GET / HTTP/1.1\r\nX-Path: /" + LONG, False),
}
PARSERS = {"c": getattr(http_parser, "HttpRequestParserC", None)}
PARSERS["python"] = http_parser.HttpRequestParserPy


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.parametrize("kind", list(PARSERS))
@pytest.mark.parametrize("which", list(HEADS))
def test_request_line_told_from_header(
    loop: asyncio.AbstractEventLoop, kind: str, which: str
) -> None:
    """The too-long request target is told apart from a too-long header name or value."""
    parser_class: Any = PARSERS[kind]
    if parser_class is None:
        pytest.skip("aiohttp's C parser is not built here")
    wire, in_request_line = HEADS[which]
    parser = parser_class(mock.Mock(), loop, 2**16, max_line_size=LIMIT, max_field_size=LIMIT)
    with pytest.raises(LineTooLong) as info:
        parser.feed_data(wire)
    assert _in_request_line(info.value, parser) is in_request_line
