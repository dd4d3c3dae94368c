"""ClassifyAndRedact: what data class a request is, from its tenant, an X-Data-Class header
(which may only raise it) and what detection finds in it. Redaction itself happens per
destination tier when a request is forwarded (`router.forwarding`), from the same scans."""

from __future__ import annotations

import asyncio
import functools
import re
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

import re2

from router.context import Reply, RequestContext
from router.errors import BadRequest
from router.headers import DECLARED_CLASS, FOUND_ENTITIES
from router.policy.residency import classify, strictest
from router.privacy import MemoScanner, Privacy, survey
from router.redaction.types import DetectionError
from router.redaction.vault import TOKEN_RE
from router.stages.survey_memo import SurveyMemo
from router.upstreams.registry import Upstreams
from router.v2.inline import (
    Unreadable,
    binary_accounted_for,
    holds_scanned_binary,
    inline_binary_tensors,
)

DATA_CLASS_HEADER = "X-Data-Class"
# Bodies past this are scanned on the redaction executor, not on the event loop.
OFF_LOOP_BYTES = 32 * 1024
# At most this many entity types are read from a previous router's FOUND_ENTITIES header.
MAX_FOUND_UPSTREAM = 64
_ENTITY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
# A JSON number whose digits are not written out (an exponent) yet may be an integral one the
# walk scans (4.111111111111111e15, 4111111111111111E+0, 4111111111111111000e-3): the raw text
# cannot show it clean. A negative exponent only after 7 integer digits, so the small floats
# tritonclient writes (1.5e-05) keep the shortcut. RE2: one linear pass.
_HIDDEN_DIGITS = re2.compile(rb"[0-9][eE]\+?[0-9]|(?:^|[^0-9.])[0-9]{7,}(?:\.[0-9]*)?[eE]-")
# Stands for a name a previous router sent that is not one: unknown entities take the strictest
# class, so a garbled header fails closed.
UNKNOWN_ENTITY = "UNKNOWN"


def _with_upstream(found: Counter[str], upstream: Counter[str]) -> Counter[str]:
    """What was found here, and each type a previous router found at least once: its values
    arrive redacted (a pseudonym found again here is the same value, counted once)."""
    return found | upstream if upstream else found


class ClassifyAndRedact:
    name = "classify"
    terminal = False

    def __init__(
        self,
        privacy: Privacy,
        executor: Executor,
        upstreams: Upstreams,
        escalating: frozenset[str] = frozenset(),
        cached_apis: frozenset[str] = frozenset(),
    ) -> None:
        self._privacy = privacy
        self._executor = executor
        self._upstreams = upstreams
        self._escalating = escalating  # models whose answers may be escalated upstream
        self._cached_apis = cached_apis  # a cached answer needs the request's class too
        self._memo = SurveyMemo()  # only for cacheable requests, whose repeats are hits

    async def __call__(self, ctx: RequestContext) -> Reply | None:
        bundle = self._privacy.bundle
        ctx.policy_revision = bundle.revision
        ctx.declared_class = declared = self._declared(ctx)
        # What a previous router found counts as found here: its values are already redacted,
        # but the residency rule they call for still holds at this hop.
        upstream = found_upstream(",".join(_values(ctx.headers, FOUND_ENTITIES)))
        ctx.entities = upstream
        ctx.data_class = classify(bundle, ctx.declared_class, upstream) if upstream else declared
        if not self._may_leave(ctx) and ctx.api not in self._cached_apis:
            # Answered on the site or nowhere: scanning would buy nothing. Should a cluster
            # learn the model before routing, the unsurveyed request still may not leave.
            ctx.unsurveyed = True
            return None
        if ctx.version and self._privacy.detectors.locate(ctx.version):
            # The path goes upstream as it came: a version is a name such as "2", never data.
            raise BadRequest("the model version in the path holds what looks like personal data")
        detection = bundle.detection
        if len(ctx.body) > detection.max_body_bytes:
            self._unscanned(ctx, "body over the detection size cap")
            return None
        if ctx.api == "kserve-v2" and (
            holds_scanned_binary(ctx.document)
            or not binary_accounted_for(ctx.document, len(ctx.binary))
        ):
            try:
                ctx.inlined = await self._inlined(ctx)
            except Unreadable:
                self._unscanned(ctx, "binary tensors that cannot be read for detection")
                return None
        ctx.scanner = MemoScanner(
            self._privacy.detectors, detection.max_body_bytes, detection.cpu_deadline_ms / 1000
        )
        if ctx.api in self._cached_apis:
            privacy = self._privacy
            ctx.content_key = self._memo.key(ctx, privacy.detectors, privacy.survey.headers)
            remembered = self._memo.get(ctx.content_key)
            if remembered is not None:
                found, ctx.scanner.rewrites = remembered
                ctx.entities = _with_upstream(found, upstream)
                ctx.data_class = classify(bundle, ctx.declared_class, ctx.entities)
                return None
        try:
            if len(ctx.body) > OFF_LOOP_BYTES:
                loop = asyncio.get_running_loop()
                found = await loop.run_in_executor(self._executor, self._survey, ctx)
            else:
                found = self._survey(ctx)
        except DetectionError as exc:
            # Its message names the limit reached, never request data.
            self._unscanned(ctx, f"detection did not finish: {exc}")
            return None
        if ctx.content_key:
            self._memo.put(ctx.content_key, found, ctx.scanner.rewrites)
        ctx.entities = _with_upstream(found, upstream)
        ctx.data_class = classify(bundle, ctx.declared_class, ctx.entities)
        return None

    def _may_leave(self, ctx: RequestContext) -> bool:
        if ctx.model in self._escalating:
            return True
        return any(
            c.models is not None and ctx.model in c.models
            for c in self._upstreams.clusters.values()
        )

    def _declared(self, ctx: RequestContext) -> str:
        bundle = self._privacy.bundle
        classes = bundle.data_classes.classes
        declared = [bundle.tenants.data_class_of(ctx.tenant) or bundle.data_classes.default]
        # Every copy of a header counts: each may only raise the class.
        for raw in _values(ctx.headers, DATA_CLASS_HEADER):
            wanted = _class_named(classes, raw)
            if wanted is None:
                raise BadRequest(f"{DATA_CLASS_HEADER} must be one of {', '.join(classes)}")
            declared.append(wanted)
        for previous in _values(ctx.headers, DECLARED_CLASS):
            # A previous router's class, in its bundle's names: one unknown here is the strictest.
            declared.append(_class_named(classes, previous) or classes[-1])
        # Headers may raise the class, never lower it.
        return strictest(bundle, declared) if len(declared) > 1 else declared[0]

    def _survey(self, ctx: RequestContext) -> Counter[str]:
        """Every entity the request holds, in body, query string and scanned headers."""
        if not self._plainly_clean(ctx):
            return survey(self._privacy, ctx)
        raw = ctx.body if ctx.header_length is None else ctx.body[: ctx.header_length]
        if b"<" in raw:  # nothing to find, but a placeholder it holds must not be issued
            ctx.scanner.placeholders.update(TOKEN_RE.findall(raw.decode("ascii")))
        return survey(self._privacy, ctx, document=False)

    async def _inlined(self, ctx: RequestContext) -> tuple[dict[str, Any], bytes] | None:
        """The binary tensors detection reads (BYTES; integers with an element large enough
        to hold an entity) as their JSON form (router.v2.inline); decoded on the redaction
        executor for a large body. Raises Unreadable."""
        assert ctx.document is not None
        inline = functools.partial(inline_binary_tensors, ctx.document, ctx.binary)
        if len(ctx.body) <= OFF_LOOP_BYTES:
            return inline()
        return await asyncio.get_running_loop().run_in_executor(self._executor, inline)

    def _plainly_clean(self, ctx: RequestContext) -> bool:
        """Whether the JSON as sent shows that no string in it can hold a finding, so the walk
        would find nothing: every string and digit run stands in it literally (ASCII, no
        escapes, nothing the normaliser decodes: %, &; no number in exponent form hiding an
        integer's digits) and no pattern occurs anywhere in it.
        Within the walk's own limits only (a string per 2 bytes at most, a level per bracket),
        so a body the walk would refuse still is walked, and refused."""
        if ctx.inlined is not None:
            return False  # text or digits are in the binary part, not in the raw JSON
        detectors, plan = self._privacy.detectors, self._privacy.survey
        raw = ctx.body if ctx.header_length is None else ctx.body[: ctx.header_length]
        if not detectors.whole_text_sound or len(raw) > 2 * plan.max_leaves:
            return False
        if not raw.isascii() or b"\\" in raw or b"%" in raw or b"&" in raw:
            return False
        if raw.count(b"[") + raw.count(b"{") > plan.max_depth:
            return False
        return not detectors.may_occur(raw) and not _HIDDEN_DIGITS.search(raw)

    def _unscanned(self, ctx: RequestContext, why: str) -> None:
        """Fail closed: the request may still run here, but may not leave the site. Only a
        route the bundle marks fail-open goes on, as it came (nothing could be redacted)."""
        if fails_open(ctx.path, self._privacy.bundle.detection.fail_open_paths):
            ctx.reasons.append("detection_failed_open")
            return
        ctx.unscanned = why
        ctx.reasons.append("unscanned")
        return


def _class_named(classes: tuple[str, ...], raw: str) -> str | None:
    """The bundle's class a header names, in any case (a bundle may spell them `PII`)."""
    wanted = raw.strip().lower()
    return next((name for name in classes if name.lower() == wanted), None)


def _values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value a header was sent with (a plain mapping holds one)."""
    if name not in headers:
        return []  # the common case, answered without a list of copies
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    value = headers.get(name)
    return [] if value is None else [value]


def found_upstream(raw: str | None) -> Counter[str]:
    """The entity types a previous router found (its FOUND_ENTITIES header), once each."""
    if not raw:
        return Counter()
    names = [name.strip() for name in raw.split(",")]
    found = {
        name if _ENTITY_NAME.fullmatch(name) else UNKNOWN_ENTITY
        for name in names[:MAX_FOUND_UPSTREAM]
        if name
    }
    if len(names) > MAX_FOUND_UPSTREAM:
        found.add(UNKNOWN_ENTITY)
    return Counter(found)


def fails_open(path: str, routes: tuple[str, ...]) -> bool:
    """Whether one of the bundle's fail-open routes covers `path` (its query string aside).
    A route covers what lies under it, by whole path segments: `/v2/models/cam` does not
    cover `/v2/models/camera_pii/infer`, which a plain string prefix would."""
    route = path.partition("?")[0]
    for prefix in routes:
        if route == prefix:
            return True
        if route.startswith(prefix) and (prefix.endswith("/") or route[len(prefix)] == "/"):
            return True
    return False
