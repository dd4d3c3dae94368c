"""Writing the audit trail from the request path: one record per request that got an audit id,
built from its context (where, by which model and policy, from which digested inputs) and
written to the log file before its answer goes out (a stream's when the stream ends, before
its end is sent; a request whose client left first gets a `client_gone` record, and one whose
client left mid-answer a record of what was sent, with the reason `client_gone`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from cachetools import LRUCache

from router.audit import AuditLog, AuditLogError, AuditRecord, Digester
from router.context import RequestContext
from router.errors import RouterError
from router.policy.decide import Failure
from router.settings import SiteSettings
from router.sse import ends_with_done, error_code

log = logging.getLogger(__name__)

# Fragment digests remembered per surveyed content (`RequestContext.content_key`): a repeated
# cacheable request is digested once. Only digests are kept, as the records themselves hold.
MEMO_ENTRIES = 4096
# The record of a request whose client left before any answer went out (nginx's "client closed
# request"), with the reason CLIENT_GONE after the route's.
CLIENT_GONE_STATUS = 499
CLIENT_GONE = "client_gone"
# The reason of a stream ended by an error event after its answer began (with the event's code).
STREAM_ERROR = "stream_error"


class Trail:
    def __init__(
        self,
        audit: AuditLog | None,
        digester: Digester,
        site: SiteSettings,
        copy: Callable[[dict[str, Any]], None] | None = None,
        holds_data: Callable[[str], bool] | None = None,
    ) -> None:
        self._log = audit
        # Whether detection finds something in a JSON key (the current bundle's detectors):
        # such a key is no schema, and is digested in a record's fragment paths.
        self._holds_data = holds_data
        self._copy = copy  # also send each record to the centre (the spool)
        self._digester = digester
        self._site = site
        self._fragments: LRUCache[bytes, dict[str, str]] = LRUCache(MEMO_ENTRIES)

    @property
    def enabled(self) -> bool:
        return self._log is not None

    @property
    def audit_log(self) -> AuditLog | None:
        return self._log

    def digest_inputs(self, ctx: RequestContext) -> None:
        """Digest the request's inputs ahead of its record. Scheduled as the request starts,
        so it runs at the request's first wait (on the upstream, or on the model): the record
        is written before the answer goes out, and at low load the loop would idle there."""
        if self._log is not None and not ctx.recorded and ctx.inputs is None:
            ctx.inputs = self._inputs(ctx)

    def _inputs(self, ctx: RequestContext) -> dict[str, str] | None:
        """None while the request is not parsed yet."""
        if ctx.document is None:
            return None
        inputs = self._document_digests(ctx)
        if ctx.header_length is not None:
            inputs.update(ctx.tensor_digests(self._digester))
        return inputs

    def record(self, ctx: RequestContext, status: int, output: str | None) -> AuditRecord:
        inputs = ctx.inputs if ctx.inputs is not None else self._inputs(ctx)
        return AuditRecord(
            id=ctx.audit_id,
            site=self._site.id,
            tier=self._site.tier.value,
            api=ctx.api,
            status=status,
            request_id=ctx.request_id,
            tenant=ctx.tenant,
            served_tier=ctx.served_tier,
            served_by=ctx.served_by,
            model=_named_model(ctx),
            model_version=ctx.served_version,
            model_sha256=ctx.model_sha256,
            policy_revision=ctx.policy_revision,
            reasons=tuple(ctx.reasons),
            data_class=ctx.data_class,
            # Plain str keys: detectors name entities with StrEnum members.
            entities={str(k): v for k, v in ctx.entities.items()},
            redactions={str(k): v for k, v in ctx.redactions.items()},
            cache=ctx.cache,
            cache_of=ctx.cache_of,
            inputs=inputs or {},
            output=output,
        )

    def _document_digests(self, ctx: RequestContext) -> dict[str, str]:
        digests = self._digester.fragments
        if not ctx.content_key:
            return digests(ctx.document, holds_data=self._holds_data)
        known = self._fragments.get(ctx.content_key)
        if known is None:
            known = digests(ctx.document, holds_data=self._holds_data)
            self._fragments[ctx.content_key] = known
        return dict(known)

    async def write(self, ctx: RequestContext, status: int, body: bytes | None) -> None:
        if self._log is None or not ctx.audit_id or ctx.recorded:
            return  # one record per audit id, whatever fails after it was written
        ctx.recorded = True
        output = self._digester.digest("output", body) if body is not None else None
        await self._append(self.record(ctx, status, output))

    async def _append(self, record: AuditRecord) -> None:
        assert self._log is not None
        try:
            body = await self._log.append(record)
        except AuditLogError as exc:
            # Serving goes on; the gap shows in the log's failure count and in this line.
            log.error("audit record not written: %s", type(exc).__name__)
            return
        if self._copy is not None:
            self._copy(body)

    async def streamed(
        self,
        ctx: RequestContext,
        status: int,
        chunks: AsyncIterator[bytes],
        cut_by: Callable[[], str] = str,
        *,
        hold_last: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        """Relay a stream and write its record once it ended, digesting what was sent. A
        stream the router ends with an error event (the upstream broke off; or `cut_by`
        names the code of what cancelled it, the drain) is recorded with
        `stream_error:CODE`: its headers said 200, but it is no complete answer. One whose
        client left mid-stream (the handler cancelled while it waited here; or the relay's
        write failed, which the relay notes) keeps its status, with the reason `client_gone`.

        `hold_last`: each chunk goes on once the next one arrived, and the last only after the
        record is written, so no client holds the complete answer before its record (a plain
        body's end is its last byte, not a terminator). Cut short, the held chunk is never
        sent, nor digested: the record's digest stays that of the bytes sent."""
        digest = self._digester.stream("output")
        last = b""
        done = False  # an SSE stream's `data: [DONE]` was written: the client has it whole
        sent = b""  # the last chunk written
        try:
            async for chunk in chunks:
                if hold_last:
                    chunk, last = last, chunk
                    if not chunk:
                        continue
                yield chunk
                # Digested once taken: the relay asks for the next chunk only after writing
                # this one; a write that failed (the client left) closes it here instead.
                digest.update(chunk)
                sent = chunk
                done = not hold_last and ends_with_done(chunk)
            digest.update(last)
            if not hold_last and not done and (code := error_code(sent)):
                # It came with an error event (a chained router's upstream broke off): no
                # complete answer, though this router relayed it whole.
                ctx.reasons.append(f"{STREAM_ERROR}:{code}")
        except RouterError as exc:
            ctx.reasons.append(f"{STREAM_ERROR}:{exc.code}")
            raise
        except asyncio.CancelledError:
            # Not cut by the router: the handler was cancelled because its client left. One
            # that left once it had the [DONE] (the openai SDK closes then, while the router
            # waits for the upstream's end) did not leave mid-answer.
            if code := cut_by():
                ctx.reasons.append(f"{STREAM_ERROR}:{code}")
            elif not done:
                note_client_gone(ctx)
            raise
        finally:
            try:
                # Its source too, now (the upstream connection), not when collected.
                if isinstance(chunks, AsyncGenerator):
                    await chunks.aclose()
            finally:
                await self.write_digest(ctx, status, digest.hexdigest())
        if last:
            yield last

    async def write_digest(self, ctx: RequestContext, status: int, output: str) -> None:
        if self._log is None or not ctx.audit_id or ctx.recorded:
            return  # one record per audit id, whatever fails after it was written
        ctx.recorded = True
        await self._append(self.record(ctx, status, output))

    async def client_gone(self, ctx: RequestContext) -> None:
        """The record of a request whose client left before its answer began (handler
        cancelled, connection lost), unless it has one already: every audit id that was made
        leaves a record saying what became of the request."""
        if self._log is None or not ctx.audit_id or ctx.recorded:
            return
        ctx.recorded = True
        note_client_gone(ctx)
        await self._append(self.record(ctx, CLIENT_GONE_STATUS, None))


def note_client_gone(ctx: RequestContext) -> None:
    """The record's reason for a request whose client left (before or during its answer), once;
    none for an answer the router had cut already (`stream_error:CODE`): what went wrong after
    that (a drain's end closing it, a client leaving an answer it was told is broken) is the
    cut's doing, not the client's."""
    if not any(r == CLIENT_GONE or r.startswith(STREAM_ERROR) for r in ctx.reasons):
        ctx.reasons.append(CLIENT_GONE)


def _named_model(ctx: RequestContext) -> str:
    """The model, when it names one the router knows: a name nobody serves is only what the
    client typed (an e-mail address in the `model` field), and the trail, which may be copied
    to the centre, records what was served, never what was said."""
    if ctx.served_model:
        return ctx.served_model
    if ctx.cache_of or ctx.served_by:
        return ctx.model
    decision = ctx.decision
    if decision is None or decision.failure is Failure.UNKNOWN_MODEL:
        return ""
    return ctx.model
