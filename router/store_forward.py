"""Store-and-forward on the request path: copies of audit records and desensitized samples go
into the site's durable spool, and a drainer uploads them to the central collector whenever the
link allows. A sample is the request and its answer as the central tier may see them (redacted
with the central tier's rules, tokens kept as tokens): the spool never holds raw personal data.
A streamed answer's sample holds its events (router.stream_copy), made once the stream went out
whole and off the answer's path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Coroutine
from typing import Any

import orjson

from router.audit import new_audit_id
from router.context import Reply, RequestContext, media_type
from router.errors import DetectionFailed
from router.policy.residency import permits
from router.privacy import MemoScanner, Privacy
from router.redaction.types import DetectionError
from router.redaction.vault import TokenVault
from router.redaction.walker import redact_json
from router.spool import Drainer, Spool
from router.stages.classify import OFF_LOOP_BYTES
from router.stream_copy import StreamCopy, sampled_events
from router.tier_view import View, view_for
from router.trail import CLIENT_GONE, STREAM_ERROR

log = logging.getLogger(__name__)

CENTRAL = "central"


class StoreAndForward:
    def __init__(
        self,
        spool: Spool | None,
        privacy: Privacy,
        site: str,
        rng: random.Random | None = None,
        *,
        origin: str = "",
        collector_jurisdiction: str = "",
        collector_host: str = "",
    ) -> None:
        """`origin`: the site's jurisdiction; the collector's jurisdiction and host are what
        residency judges a sample's destination by, as an endpoint's ("": untagged)."""
        self.spool = spool
        self.drainer: Drainer | None = None  # set where this process uploads the spool
        self.privacy = privacy
        self._site = site
        self._origin = origin
        self._collector_jurisdiction = collector_jurisdiction
        self._collector_host = collector_host.lower()
        self._rng = rng or random.Random()
        self._pending: set[asyncio.Task[None]] = set()
        self._unstored = 0  # records not stored since the last one that was
        self.oversized = 0  # streamed answers due a sample but over the bound: none spooled

    def audit_copy(self, record: dict[str, Any]) -> None:
        if self.spool is not None:
            self._put("audit", orjson.dumps(record), f"audit:{record.get('id', '')}")

    def draw(self) -> float | None:
        """A request's draw for its sample, made as it arrives (None: no spool, no sample), so
        that dispatch knows whether its answer is needed whole (router.relaying)."""
        return self._rng.random() if self.spool is not None else None

    def maybe_sample(self, ctx: RequestContext, reply: Reply) -> None:
        """Spool this answer as a sample at the rate the bundle sets for its model."""
        if reply.stream is not None or not self._due(ctx):
            return
        if not self._may_reach_collector(ctx):
            return  # residency keeps the request off the central tier, its sample too
        try:
            payload = self._sample(ctx, reply)
        except (DetectionError, DetectionFailed):
            return  # could not be desensitized in time: better no sample than a raw one
        if payload is not None:
            self._put("sample", payload, _sample_key(ctx))

    def stream_copy(self, ctx: RequestContext, reply: Reply) -> StreamCopy | None:
        """A copy to keep of this streamed answer as it passes, when its sample is due: bounded
        as a request body the detectors scan is (`detection.max_body_bytes`)."""
        if reply.status != 200 or not self._due(ctx) or not self._may_reach_collector(ctx):
            return None  # residency keeps the request off the central tier, its sample too
        return StreamCopy(self.privacy.bundle.detection.max_body_bytes)

    def sample_stream(self, ctx: RequestContext, copy: StreamCopy) -> None:
        """Spool the sample of a streamed answer that went out whole (its caller says so: no
        error event, no cut, its end written), redacted off the answer's path."""
        if self.spool is None or not copy.ended:
            return
        if copy.over:
            self._oversized(copy.limit)
            return
        if any(r == CLIENT_GONE or r.startswith(STREAM_ERROR) for r in ctx.reasons):
            return  # the record says it was no complete answer
        self._track(self._sample_stream(ctx, copy.chunks, copy.size))

    def _due(self, ctx: RequestContext) -> bool:
        if self.spool is None or ctx.document is None:
            return False
        if ctx.unscanned or ctx.unsurveyed or ctx.scanner is None:
            return False  # nothing desensitized to send: the request was never scanned
        rate = self.privacy.bundle.sampling.rate(ctx.model)
        if rate <= 0:
            return False
        return (ctx.sample_draw if ctx.sample_draw is not None else self._rng.random()) < rate

    def _oversized(self, limit: int) -> None:
        # Said once, not once per answer: a site streaming long answers would flood the log.
        if not self.oversized:
            log.warning(
                "spool: a streamed answer over %d bytes (detection.max_body_bytes) is not "
                "sampled; such answers are counted, not logged again",
                limit,
            )
        self.oversized += 1

    async def _sample_stream(self, ctx: RequestContext, chunks: list[bytes], size: int) -> None:
        try:
            if size + len(ctx.body) > OFF_LOOP_BYTES:
                # Scanning a long answer is CPU work: not on the loop, as a long request's is.
                payload = await asyncio.to_thread(self._streamed_sample, ctx, chunks)
            else:
                payload = self._streamed_sample(ctx, chunks)
        except (DetectionError, DetectionFailed):
            return  # could not be desensitized in time: better no sample than a raw one
        if payload is not None:
            await self._store("sample", payload, _sample_key(ctx))

    def _may_reach_collector(self, ctx: RequestContext) -> bool:
        """Whether residency lets this request reach the central tier where the collector is
        (a declared class stands even when nothing was found to redact)."""
        bundle = self.privacy.bundle
        host = self._collector_host
        return permits(
            bundle,
            declared=ctx.declared_class or bundle.data_classes.default,
            entities=frozenset(ctx.entities),
            tier=CENTRAL,
            jurisdictions=frozenset({self._collector_jurisdiction}),
            origin=self._origin,
            hosts=frozenset({host}) if host else frozenset(),
        )

    def _sample(self, ctx: RequestContext, reply: Reply) -> bytes | None:
        view = self._central_view(ctx)
        answer: Any = None
        if media_type(reply.content_type) == "application/json" and reply.body:
            parsed = _answer_document(reply.body)
            if parsed is _UNREADABLE:
                return None
            answer = self._desensitized(ctx, parsed)
        return self._payload(ctx, view, answer, streamed=False)

    def _streamed_sample(self, ctx: RequestContext, chunks: list[bytes]) -> bytes | None:
        events = sampled_events(chunks)
        if events is None:
            return None
        view = self._central_view(ctx)
        return self._payload(ctx, view, self._desensitized(ctx, events), streamed=True)

    def _central_view(self, ctx: RequestContext) -> View:
        served = ctx.redactions  # what was done for the tier that answered stays the record's
        view = view_for(ctx, CENTRAL, self.privacy)
        ctx.redactions = served
        return view

    def _desensitized(self, ctx: RequestContext, answer: Any) -> Any:
        """The answer redacted with the central tier's rules, its tokens the request's."""
        assert ctx.scanner is not None
        vault = ctx.vault if ctx.vault is not None else TokenVault()
        detection = self.privacy.bundle.detection
        # Knowing the request's values: the answer may repeat one without its context.
        scanner = MemoScanner(
            self.privacy.detectors,
            detection.max_body_bytes,
            detection.cpu_deadline_ms / 1000,
            known=ctx.scanner.known,
        )
        scanner.surveyed = True  # the request's values are all known
        plan = self.privacy.plans[CENTRAL]
        redacted, _ = redact_json(answer, plan, scanner, vault, self.privacy.hasher)
        return redacted

    def _payload(self, ctx: RequestContext, view: View, answer: Any, *, streamed: bool) -> bytes:
        return orjson.dumps(
            {
                "site": self._site,
                "api": ctx.api,
                "model": ctx.model,
                "audit_id": ctx.audit_id,
                "data_class": ctx.data_class,
                "request": view.document,
                "response": answer,
                "streamed": streamed,
            }
        )

    def _put(self, kind: str, payload: bytes, key: str) -> None:
        """Off the request's path (a durable commit costs about a millisecond), but tracked, so
        shutdown waits for every put it started."""
        assert self.spool is not None
        self._track(self._store(kind, payload, key))

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _store(self, kind: str, payload: bytes, key: str) -> None:
        assert self.spool is not None
        if await self.spool.put(kind, payload, key=key) is None:
            # Once per episode, not once per answer: a full disk must not flood the log.
            if not self._unstored:
                log.warning(
                    "spool: records are not stored (full or unavailable; each is counted) "
                    "until one is again"
                )
            self._unstored += 1
        elif self._unstored:
            log.warning("spool: records are stored again, after %d not stored", self._unstored)
            self._unstored = 0

    async def drain_pending(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


_UNREADABLE = object()


def _sample_key(ctx: RequestContext) -> str:
    # Without an audit id, a fresh one: the request id is the client's, which other requests
    # and other sites may share, and the collector de-duplicates by key.
    return f"sample:{ctx.audit_id or new_audit_id()}"


def _answer_document(body: bytes) -> Any:
    """A JSON answer, _UNREADABLE when it is none. Triton (and this router) write a v2 answer's
    non-finite outputs as bare NaN/Infinity, which orjson refuses and the stdlib reads; the
    sample then holds them as null, JSON's only form for them."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _UNREADABLE
