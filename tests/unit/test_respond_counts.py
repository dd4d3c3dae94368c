"""router/api/respond.py's and errors.py's counts: a request whose client leaves while its audit
record is being written (fsync 'always' waits for a group commit) is still counted, as
client_closed, whether its answer was a reply or an error."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from router.api.errors import answer_failure
from router.api.respond import CTX, run
from router.api.state import STATUS, TELEMETRY, TRAIL, ServerStatus
from router.audit import AuditLog, Digester, new_audit_id
from router.context import Reply, RequestContext
from router.errors import InvalidTensor
from router.settings import SiteSettings
from router.telemetry import Telemetry
from router.trail import Trail

LIMIT_S = 5.0


class Answering:
    """A pipeline that answers at once."""

    async def run(self, ctx: RequestContext) -> Reply:
        return Reply(b"{}", "application/json", 200, {})


@pytest.mark.parametrize("answer", ["reply", "error"])
async def test_client_gone_while_the_record_is_synced_is_counted(
    answer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler cancelled while its record waits for the fsync is counted once, as a
    client that left before its answer, like one cancelled in the pipeline."""
    entered, stuck = threading.Event(), threading.Event()
    real = os.fsync

    def slow_fsync(fd: int) -> None:
        entered.set()
        stuck.wait(LIMIT_S)
        real(fd)

    app = web.Application()
    app[STATUS] = ServerStatus()
    app[TELEMETRY] = Telemetry()
    audit = AuditLog(tmp_path / "audit.jsonl", fsync="always")
    app[TRAIL] = Trail(audit, Digester(b"k" * 16), SiteSettings())
    request = make_mocked_request("POST", "/v2/models/m/infer", app=app)
    ctx = RequestContext(
        api="kserve-v2", model="m", version=None, deadline=0.0, audit_id=new_audit_id()
    )
    request[CTX] = ctx
    monkeypatch.setattr(os, "fsync", slow_fsync)
    try:
        if answer == "reply":
            answering = run(request, Answering(), ctx)  # type: ignore[arg-type]
        else:
            answering = answer_failure(request, InvalidTensor("bad tensor"))
        handler = asyncio.ensure_future(answering)
        await asyncio.to_thread(entered.wait, LIMIT_S)
        handler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handler
    finally:
        stuck.set()
    await audit.aclose()
    assert app[TELEMETRY].requests.requests == {("kserve-v2", "none", "client_closed"): 1}
