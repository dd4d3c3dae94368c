"""router/api/respond.py's stream writer: whatever ends a stream (its end, the client leaving
before or during it), the stream's generators are closed at once, so the upstream connection,
the cluster's place and the audit record behind them are given back without waiting for a
garbage collection."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from unittest import mock

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from router.api.respond import _stream
from router.api.state import STATUS, TELEMETRY, TRAIL, ServerStatus
from router.audit import AuditLog, Digester, new_audit_id, verify
from router.context import Reply, RequestContext
from router.errors import StreamBroken
from router.settings import SiteSettings
from router.telemetry import Telemetry
from router.trail import Trail

LIMIT_S = 5.0


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Collections off: only prompt closing may give resources back."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def upstream(released: asyncio.Event) -> AsyncIterator[bytes]:
    try:
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"
    finally:
        released.set()


async def relay(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """As forwarding's relay: the first bytes (read before the answer began), then the rest."""
    yield first
    async for chunk in rest:
        yield chunk


async def started_stream(released: asyncio.Event) -> AsyncIterator[bytes]:
    rest = upstream(released)
    first = await anext(rest)  # started, as the first-byte read starts the real one
    return relay(first, rest)


def context() -> RequestContext:
    return RequestContext(
        api="openai", model="m", version=None, deadline=0.0, audit_id=new_audit_id()
    )


@pytest.mark.usefixtures("no_gc")
@pytest.mark.parametrize(
    ("fails", "recorded"),
    [("write_headers", (499, ["client_gone"])), ("write", (200, ["client_gone"]))],
)
async def test_client_gone_closes_the_stream(
    fails: str, recorded: tuple[int, list[str]], tmp_path: Path
) -> None:
    """The client left before the headers went out, or during the body: no exception for
        aiohttp to log with a traceback, the upstream side is released at once, and the audit
        record says what happened (client gone before the answer began; or what was sent, and that
    the client left)."""
    released = asyncio.Event()
    writer = mock.Mock()
    writer.write_headers = mock.AsyncMock()
    writer.write = mock.AsyncMock()
    setattr(writer, fails, mock.AsyncMock(side_effect=ConnectionResetError("client gone")))
    app = web.Application()
    app[STATUS] = ServerStatus()
    app[TELEMETRY] = Telemetry()
    trail = app[TRAIL] = Trail(
        AuditLog(tmp_path / "audit.jsonl", fsync="never"), Digester(b"k" * 16), SiteSettings()
    )
    request = make_mocked_request("POST", "/v1/chat/completions", writer=writer, app=app)
    ctx = context()
    reply = Reply(b"", "text/event-stream", 200, {}, stream=await started_stream(released))
    await _stream(request, reply, {}, ctx)
    del reply
    async with asyncio.timeout(LIMIT_S):
        await released.wait()
    assert trail.audit_log is not None
    await trail.audit_log.aclose()
    (entry,) = (orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().split())
    assert (entry["id"], entry["status"], entry["reasons"]) == (ctx.audit_id, *recorded)
    assert verify(tmp_path / "audit.jsonl").ok


async def broken_upstream() -> AsyncIterator[bytes]:
    yield b"data: 1\n\n"
    raise StreamBroken("cluster c endpoint 0: reset after the stream started")


async def test_a_stream_ended_by_an_error_event_is_recorded_so(tmp_path: Path) -> None:
    """A stream the router ends with an error event (its upstream broke off) is recorded with
    the event's code among its reasons, not as a complete answer."""
    writer = mock.Mock()
    writer.write_headers = mock.AsyncMock()
    writer.write = mock.AsyncMock()
    writer.write_eof = mock.AsyncMock()
    app = web.Application()
    app[STATUS] = ServerStatus()
    app[TELEMETRY] = Telemetry()
    trail = app[TRAIL] = Trail(
        AuditLog(tmp_path / "audit.jsonl", fsync="never"), Digester(b"k" * 16), SiteSettings()
    )
    request = make_mocked_request("POST", "/v1/chat/completions", writer=writer, app=app)
    ctx = context()
    ctx.reasons.append("forward:c")
    reply = Reply(b"", "text/event-stream", 200, {}, stream=broken_upstream())
    await _stream(request, reply, {}, ctx)
    sent = b"".join(call.args[0] for call in writer.write.await_args_list)
    assert b'"code":"upstream_stream_broken"' in sent
    assert trail.audit_log is not None
    await trail.audit_log.aclose()
    (entry,) = (orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().split())
    assert (entry["status"], entry["reasons"]) == (
        200,
        ["forward:c", "stream_error:upstream_stream_broken"],
    )
