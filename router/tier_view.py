"""What each tier may see of a request: its document, path and headers redacted with that
tier's rules (a view is made once per tier and request, kept on the context)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from multidict import CIMultiDict

from router.context import RequestContext
from router.errors import (
    DetectionFailed,
)
from router.headers import goes_upstream
from router.privacy import KnownCopies, Privacy, survey
from router.redaction.types import DetectionError
from router.redaction.vault import TokenVault
from router.redaction.walker import RedactionPlan, redact_headers, redact_json, redact_query
from router.stages.classify import OFF_LOOP_BYTES
from router.v2.inline import binary_accounted_for, rebinarised


@dataclass(slots=True)
class View:
    """What one destination tier may see of a request."""

    document: dict[str, Any] | None
    path: str
    headers: Mapping[str, str]
    changed: bool  # anything was redacted or dropped: the body must be re-encoded
    binary: bytes | None = None  # v2: the binary part to send with `document`; None: as received
    # Scanned and found clean, the body still goes as the document that was scanned, encoded
    # anew: the bytes received can say more than their parse (a duplicate key's first value, a
    # float literal's digits its value does not keep: 6011000000000000001.0).
    reencoded: bool = False


def view_for(ctx: RequestContext, tier: str, privacy: Privacy) -> View:
    """The request as `tier` may see it: redacted by the bundle's plan for that tier, with one
    token vault per request (so a value keeps its token across tiers and retries). Made once
    per tier (a retry, a sample reuse it); `ctx.redactions` says what it took."""
    made: tuple[View, Counter[str] | None] | None = ctx.views.get(tier)
    if made is None:
        fresh = _view(ctx, tier, privacy)
        made = ctx.views[tier] = (fresh, Counter(ctx.redactions) if fresh.changed else None)
    view, counts = made
    ctx.redactions = Counter(counts) if counts is not None else Counter()
    return view


async def prepare_view(ctx: RequestContext, tier: str, privacy: Privacy) -> None:
    """A large body's view is made on a worker thread, as its survey was: the walk is CPU
    work, up to the detection budget per tier, that must not stall the event loop."""
    if len(ctx.body) > OFF_LOOP_BYTES and tier not in ctx.views:
        await asyncio.to_thread(view_for, ctx, tier, privacy)


def _view(ctx: RequestContext, tier: str, privacy: Privacy) -> View:
    unchanged = View(ctx.document, ctx.path, ctx.headers, False)
    if ctx.scanner is None or not privacy.needs_redaction(tier):
        return unchanged  # nothing scanned (fail-open, no body) or the tier keeps everything
    plan = privacy.plans[tier]
    scanner = ctx.scanner
    if (
        not ctx.entities
        and not scanner.rewrites  # known from the survey, or from the memo that skipped it
        and not _holds_any(ctx.scanned_document, plan.drop_fields)
    ):
        # Nothing found, nothing to drop, no string to re-encode: no second walk.
        return View(ctx.document, ctx.path, ctx.headers, False, reencoded=ctx.document is not None)
    # Each walk has the CPU budget to itself: a fallback's walk may come long after the survey.
    ctx.scanner.renew()
    try:
        return _redacted_view(ctx, tier, plan, privacy)
    except DetectionError:
        # Fail closed: what could not be redacted in time does not leave the site.
        raise DetectionFailed(
            f"the request could not be redacted for the {tier} tier within the detection "
            "budget, so it may not leave this site"
        ) from None


def _redacted_view(ctx: RequestContext, tier: str, plan: RedactionPlan, privacy: Privacy) -> View:
    if not ctx.scanner.surveyed:
        # Skipped by a remembered survey: learn every value first, so that a copy of one found
        # in context elsewhere is redacted wherever it stands, before or after it in the walk.
        survey(privacy, ctx)
    if ctx.vault is None:
        ctx.vault = TokenVault(reserved=ctx.scanner.placeholders)
    counts: Counter[str] = Counter()
    document = ctx.scanned_document
    if document is not None:
        document, found = redact_json(document, plan, ctx.scanner, ctx.vault, privacy.hasher)
        counts += found
    base, _, query = ctx.path.partition("?")
    path = ctx.path
    if query and privacy.bundle.detection.query:
        query, found = redact_query(query, plan, ctx.scanner, ctx.vault, privacy.hasher)
        counts += found
        path = f"{base}?{query}"
    headers, found = _redacted_headers(ctx, plan, privacy)
    counts += found
    ctx.redactions = counts
    binary = None
    if ctx.inlined is not None and ctx.document is not None:
        # Tensors read as JSON for detection but left clean go on as the bytes they came as.
        document, binary = rebinarised(ctx.document, ctx.binary, ctx.inlined, document)
    sent = len(ctx.binary) if binary is None else len(binary)
    if ctx.header_length is not None and not binary_accounted_for(document, sent):
        # A drop rule removed a binary input (or what declared its size): its bytes cannot
        # be told from the others', and must not go without it.
        raise DetectionFailed(
            f"a drop rule for the {tier} tier removed a binary tensor's declaration, so its "
            "data cannot be left out and the request may not leave this site"
        )
    return View(document, path, headers, True, binary)


def _redacted_headers(
    ctx: RequestContext, plan: RedactionPlan, privacy: Privacy
) -> tuple[Mapping[str, str], Counter[str]]:
    """The headers the bundle names, scanned; every other that goes upstream rid of the
    copies of values found elsewhere in the request (a card in the body repeated in a
    client's own header, an e-mail in a Referer's query)."""
    assert ctx.vault is not None
    counts: Counter[str] = Counter()
    pairs: list[tuple[str, str]] = list(ctx.headers.items())
    changed = False
    if plan.headers:
        pairs, found = redact_headers(pairs, plan, ctx.scanner, ctx.vault, privacy.hasher)
        counts += found
        changed = True
    if not len(ctx.scanner.known):
        return (CIMultiDict(pairs) if changed else ctx.headers), counts  # no copy to look for
    named = {name.lower() for name in plan.headers}
    others = tuple({n for n, _ in pairs if n.lower() not in named and goes_upstream(n)})
    if others:
        copies = replace(plan, headers=others)
        known = KnownCopies(ctx.scanner.known)
        pairs, found = redact_headers(pairs, copies, known, ctx.vault, privacy.hasher)
        counts += found
        changed = changed or bool(found)
    return (CIMultiDict(pairs) if changed else ctx.headers), counts


def _holds_any(document: dict[str, Any] | None, paths: tuple[str, ...]) -> bool:
    """Whether a drop-field path could match: its first segment is a top-level key, or a
    pattern. Cheap, and errs toward walking."""
    if document is None or not paths:
        return False
    firsts = {path.split(".", 1)[0] for path in paths}
    if any(char in first for first in firsts for char in "*?["):
        return True  # a pattern: let the walker match it
    return not firsts.isdisjoint(document)
