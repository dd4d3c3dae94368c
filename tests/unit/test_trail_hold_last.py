"""Trail.streamed with `hold_last` (a plain answer relayed as it arrives): the record is in the
log before the last chunk is handed on, and it digests exactly the chunks handed on, also when
the source breaks off (the chunk held then is never sent)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from router.audit import AuditLog, Digester, new_audit_id
from router.context import RequestContext
from router.errors import StreamBroken
from router.settings import SiteSettings
from router.trail import Trail

CHUNKS = [b"first ", b"second ", b"third"]


def context() -> RequestContext:
    return RequestContext(
        api="openai", model="m", version=None, deadline=0.0, audit_id=new_audit_id()
    )


async def source(breaks: bool) -> AsyncIterator[bytes]:
    for chunk in CHUNKS:
        yield chunk
    if breaks:
        raise StreamBroken("cluster c endpoint 0: reset after the answer began")


def records(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().split()] if path.exists() else []


async def test_the_record_comes_before_the_last_chunk(tmp_path: Path) -> None:
    """Each chunk is handed on once the next arrived; when the last is, the record (with the
    digest of all three) is in the log already."""
    log = tmp_path / "audit.jsonl"
    digester = Digester(b"k" * 16)
    trail = Trail(AuditLog(log, fsync="never"), digester, SiteSettings())
    seen: list[tuple[bytes, int]] = []
    async for chunk in trail.streamed(context(), 200, source(False), hold_last=True):
        seen.append((chunk, len(records(log))))
    assert seen == [(b"first ", 0), (b"second ", 0), (b"third", 1)]
    (entry,) = records(log)
    assert entry["output"] == digester.digest("output", b"".join(CHUNKS))
    assert trail.audit_log is not None
    await trail.audit_log.aclose()


async def test_a_break_drops_the_held_chunk_from_the_digest(tmp_path: Path) -> None:
    """The source breaks after its third chunk: only two were handed on, the record digests
    those two and names the break."""
    log = tmp_path / "audit.jsonl"
    digester = Digester(b"k" * 16)
    trail = Trail(AuditLog(log, fsync="never"), digester, SiteSettings())
    ctx = context()
    sent: list[bytes] = []

    async def relay() -> None:
        async for chunk in trail.streamed(ctx, 200, source(True), hold_last=True):
            sent.append(chunk)

    with pytest.raises(StreamBroken):
        await relay()
    assert sent == CHUNKS[:2]
    (entry,) = records(log)
    assert entry["output"] == digester.digest("output", b"".join(sent))
    assert entry["reasons"] == ["stream_error:upstream_stream_broken"]
    assert trail.audit_log is not None
    await trail.audit_log.aclose()


@pytest.mark.parametrize("hold_last", [True, False], ids=["relayed", "stream"])
async def test_a_chunk_the_client_never_took_is_not_digested(
    tmp_path: Path, hold_last: bool
) -> None:
    """The client leaves: writing the second chunk fails and the relay is closed with it in
    hand; the record digests the one chunk the client took, not the one it never got."""
    log = tmp_path / "audit.jsonl"
    digester = Digester(b"k" * 16)
    trail = Trail(AuditLog(log, fsync="never"), digester, SiteSettings())
    stream = trail.streamed(context(), 200, source(False), hold_last=hold_last)
    assert await anext(stream) == b"first "  # written
    assert await anext(stream) == b"second "  # its write fails: the client left
    await stream.aclose()
    (entry,) = records(log)
    assert entry["output"] == digester.digest("output", b"first ")
    assert trail.audit_log is not None
    await trail.audit_log.aclose()
