"""Store-and-forward on the request path: copies of audit records and desensitized samples go
into the site's durable spool, and a drainer uploads them to the central collector whenever the
link allows. A sample is the request and its answer as the central tier may see them (redacted
with the central tier's rules, tokens kept as tokens): the spool never holds raw personal data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

import orjson

from router.audit import new_audit_id
from router.context import Reply, RequestContext, media_type
from router.errors import DetectionFailed
from router.privacy import MemoScanner, Privacy
from router.redaction.types import DetectionError
from router.redaction.vault import TokenVault
from router.redaction.walker import redact_json
from router.spool import Drainer, Spool
from router.tier_view import view_for

log = logging.getLogger(__name__)

CENTRAL = "central"


class StoreAndForward:
    def __init__(
        self, spool: Spool | None, privacy: Privacy, site: str, rng: random.Random | None = None
    ) -> None:
        self.spool = spool
        self.drainer: Drainer | None = None  # set where this process uploads the spool
        self.privacy = privacy
        self._site = site
        self._rng = rng or random.Random()
        self._pending: set[asyncio.Task[None]] = set()
        self._unstored = 0  # records not stored since the last one that was

    def audit_copy(self, record: dict[str, Any]) -> None:
        if self.spool is not None:
            self._put("audit", orjson.dumps(record), f"audit:{record.get('id', '')}")

    def draw(self) -> float | None:
        """A request's draw for its sample, made as it arrives (None: no spool, no sample), so
        that dispatch knows whether its answer is needed whole (router.relaying)."""
        return self._rng.random() if self.spool is not None else None

    def maybe_sample(self, ctx: RequestContext, reply: Reply) -> None:
        """Spool this answer as a sample at the rate the bundle sets for its model."""
        if self.spool is None or reply.stream is not None or ctx.document is None:
            return
        if ctx.unscanned or ctx.unsurveyed or ctx.scanner is None:
            return  # nothing desensitized to send: the request was never scanned
        rate = self.privacy.bundle.sampling.rate(ctx.model)
        if rate <= 0:
            return
        if (ctx.sample_draw if ctx.sample_draw is not None else self._rng.random()) >= rate:
            return
        try:
            payload = self._sample(ctx, reply)
        except (DetectionError, DetectionFailed):
            return  # could not be desensitized in time: better no sample than a raw one
        if payload is not None:
            # Without an audit id, a fresh one: the request id is the client's, which other
            # requests and other sites may share, and the collector de-duplicates by key.
            self._put("sample", payload, f"sample:{ctx.audit_id or new_audit_id()}")

    def _sample(self, ctx: RequestContext, reply: Reply) -> bytes | None:
        served = ctx.redactions  # what was done for the tier that answered stays the record's
        view = view_for(ctx, CENTRAL, self.privacy)
        ctx.redactions = served
        answer: Any = None
        if media_type(reply.content_type) == "application/json" and reply.body:
            parsed = _answer_document(reply.body)
            if parsed is _UNREADABLE:
                return None
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
            answer, _ = redact_json(parsed, plan, scanner, vault, self.privacy.hasher)
        return orjson.dumps(
            {
                "site": self._site,
                "api": ctx.api,
                "model": ctx.model,
                "audit_id": ctx.audit_id,
                "data_class": ctx.data_class,
                "request": view.document,
                "response": answer,
            }
        )

    def _put(self, kind: str, payload: bytes, key: str) -> None:
        """Off the request's path (a durable commit costs about a millisecond), but tracked, so
        shutdown waits for every put it started."""
        assert self.spool is not None
        task = asyncio.get_running_loop().create_task(self._store(kind, payload, key))
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
