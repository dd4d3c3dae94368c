"""The safe access log's durations (router.logs.SafeAccessLogger) are measured by perf_counter
from when the app took the request: under uvloop, whose loop clock (the one aiohttp times
requests by) moves in whole milliseconds, a fast request would otherwise log 0.000ms."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from router import logs
from router.app import build_app
from router.testing import settings_for

REQUESTS = 5


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """The access logger's records, at INFO, for the test's length."""
    found: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = found.append  # type: ignore[method-assign]
    logger = logging.getLogger(logs.ACCESS_LOGGER)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_the_duration_is_taken_from_the_request_s_start(
    records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request the app took 0.42 ms before the line (by a fake perf_counter) logs 0.420ms,
    though aiohttp's loop-clock duration says 0."""
    monkeypatch.setattr(logs, "perf_counter", lambda: 100.00042)
    request = make_mocked_request("GET", "/v2/health/live")
    request[logs.ACCESS_STARTED] = 100.0
    access = logs.SafeAccessLogger(logging.getLogger(logs.ACCESS_LOGGER), "")
    access.log(request, web.Response(status=200), 0.0)
    (record,) = records
    assert record.getMessage().endswith(" 200 0.420ms")
    assert record.duration_ms == 0.42


def test_a_method_outside_the_standard_ones_is_not_written(
    records: list[logging.LogRecord],
) -> None:
    """aiohttp's pure-Python parser takes any token as a method: a card number sent as one is
    written as `(other)`, never as it came; a standard method as it is."""
    access = logs.SafeAccessLogger(logging.getLogger(logs.ACCESS_LOGGER), "")
    for method in ("4111111111111111", "PATCH"):
        access.log(make_mocked_request(method, "/nowhere"), web.Response(status=405), 0.0)
    made_up, patch = records
    assert made_up.getMessage().startswith("(other) ")
    assert made_up.method == "(other)"  # type: ignore[attr-defined]
    assert "4111111111111111" not in made_up.getMessage()
    assert patch.method == "PATCH"  # type: ignore[attr-defined]


async def _served(app: web.Application) -> None:
    runner = web.AppRunner(app, **logs.access_log_options(True))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for _ in range(REQUESTS):
                async with http.get(f"http://127.0.0.1:{port}/v2/health/live") as response:
                    assert response.status == 200
    finally:
        await runner.cleanup()


def test_fast_requests_on_uvloop_have_sub_millisecond_durations(
    records: list[logging.LogRecord], tmp_path: Path
) -> None:
    """The real app served on uvloop: its access lines' durations are not whole milliseconds
    (each would be 0.000 or 1.000 by the loop's clock)."""
    uvloop.run(_served(build_app(settings_for(tmp_path))))
    durations = [r.duration_ms for r in records if getattr(r, "safe_access", False)]
    assert len(durations) == REQUESTS
    assert all(d >= 0 for d in durations)
    assert any(d != round(d) for d in durations)


async def _malformed(app: web.Application) -> bytes:
    runner = web.AppRunner(app, **logs.access_log_options(True))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"BREW /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer
    finally:
        await runner.cleanup()


def test_a_malformed_request_is_logged_as_unmatched(
    records: list[logging.LogRecord], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A request aiohttp refuses before routing (an unknown method) gets its access line,
    route '(unmatched)', status 400; reading its match_info asserted, which lost the line and
    logged 'connection error: AssertionError' at error level for every such request."""
    caplog.set_level(logging.ERROR, logger="aiohttp.server")
    answer = uvloop.run(_malformed(build_app(settings_for(tmp_path))))
    assert answer.startswith(b"HTTP/1.0 400")
    lines = [r for r in records if getattr(r, "safe_access", False)]
    assert [(r.route, r.status) for r in lines] == [("(unmatched)", 400)]  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
