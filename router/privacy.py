"""The site's privacy machinery at run time: the policy bundle, its detectors and keyed hasher,
and one redaction plan per destination tier, built once; plus the per-request pieces (a memo of
scans, so each string is scanned once however many tiers it is redacted for)."""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from router.errors import ConfigError
from router.policy.bundle import PolicyBundle
from router.policy.model import TIERS
from router.redaction.actions import Hasher
from router.redaction.detectors import CustomPattern, Detectors, to_original
from router.redaction.known import KnownValues
from router.redaction.normalize import Normalized, normalize_mapped
from router.redaction.types import Action, Finding
from router.redaction.vault import TOKEN_RE, TokenVault
from router.redaction.walker import (
    FieldRule,
    RedactionPlan,
    redact_headers,
    redact_json,
    redact_query,
)

if TYPE_CHECKING:
    from router.context import RequestContext

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class Privacy:
    bundle: PolicyBundle
    detectors: Detectors
    hasher: Hasher
    plans: dict[str, RedactionPlan]  # per destination tier
    survey: RedactionPlan  # keeps everything: used to find what a request holds
    secret: bytes  # the site key behind pseudonyms and cache keys; never logged
    # The survey's headers in lower case: most requests carry none, and then skip the walk.
    scanned_headers: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls, bundle: PolicyBundle, secret_file: Path | None, secret: bytes | None = None
    ) -> Privacy:
        """`secret`: the site key already in use (a reload keeps pseudonyms and cache keys).
        Blocking (compiles the detectors unless a bundle with the same patterns did)."""
        detectors = bundle_detectors(bundle)
        plans = {tier: _plan(bundle, tier) for tier in TIERS}
        survey = RedactionPlan(default=Action.KEEP, headers=bundle.detection.headers)
        secret = secret if secret is not None else read_secret(secret_file)
        scanned = frozenset(name.lower() for name in bundle.detection.headers)
        return cls(bundle, detectors, Hasher(secret), plans, survey, secret, scanned)

    def needs_redaction(self, tier: str) -> bool:
        plan = self.plans[tier]
        keeps = plan.default is Action.KEEP and all(a is Action.KEEP for a in plan.actions.values())
        return not (keeps and not plan.fields and not plan.drop_fields)


def bundle_detectors(bundle: PolicyBundle) -> Detectors:
    """The built-in detectors and the bundle's custom patterns; ConfigError naming
    detection.yaml when a pattern is unusable. Blocking: call it off the event loop."""
    custom = tuple(CustomPattern(c.name, c.pattern) for c in bundle.detection.custom)
    try:
        return compiled_detectors(custom)
    except ValueError as exc:
        raise ConfigError(str(bundle.path / "detection.yaml"), [f"custom: {exc}"]) from None


# Two: the running set and a new bundle's (each set's DFA cache may grow to its RE2 budget).
@lru_cache(maxsize=2)
def compiled_detectors(custom: tuple[CustomPattern, ...]) -> Detectors:
    """Detectors are a pure function of the custom patterns (the built-in ones never change),
    and immutable: a reload that keeps the patterns (a config change, a new bundle revision)
    shares the compiled set. Compiling it takes ~5-10 ms inside RE2 with the GIL held, so a
    thread alone would not spare the event loop that stall; not compiling it does."""
    return Detectors.default(custom)


def _plan(bundle: PolicyBundle, tier: str) -> RedactionPlan:
    rules = bundle.tier_redaction(tier)
    return RedactionPlan(
        actions=dict(rules.entities),
        default=rules.default,
        fields=tuple(FieldRule(path, default=action) for path, action in rules.paths.items()),
        drop_fields=bundle.redaction.drop_fields if tier != "edge" else (),
        headers=bundle.detection.headers,
    )


def read_secret(path: Path | None) -> bytes:
    """The site key for keyed pseudonyms and cache keys (random when no file is set)."""
    if path is None:
        log.warning("policy.secret_file is not set: pseudonyms change when the process restarts")
        return secrets.token_bytes(MIN_SECRET_BYTES)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the secret file: {exc.strerror}"]) from None
    if len(data) < MIN_SECRET_BYTES:
        raise ConfigError(str(path), [f"the secret must hold at least {MIN_SECRET_BYTES} bytes"])
    return data


class MemoScanner:
    """Scans each distinct string once per request, within the bundle's size cap and CPU
    deadline (DetectionError past either: the caller fails closed). Findings are located in the
    string as received (each widened to whole encoded units), so redaction replaces them and
    leaves every other character as the caller wrote it: normalising is how values are found,
    not what is forwarded. Every value found is also looked for in every string scanned after
    (`KnownValues`); `surveyed` says the whole request was scanned once, so all are known."""

    def __init__(
        self,
        detectors: Detectors,
        max_chars: int,
        budget_s: float,
        known: KnownValues | None = None,
    ) -> None:
        self._detectors = detectors
        self._max_chars = max_chars
        self._budget_s = budget_s
        self._deadline = time.monotonic() + budget_s
        self._memo: dict[str, tuple[Normalized, list[Finding]]] = {}
        self.known = known if known is not None else KnownValues()
        self.placeholders: set[str] = set()  # token-like text the request itself holds
        self.surveyed = False
        # A JSON text inside a string went on as its parse re-encoded (walker): a view of the
        # request must then be walked even when nothing was found.
        self.rewrites = False

    @property
    def joins_numbers(self) -> bool:
        """Whether long numbers may be scanned joined (router.redaction.numbers)."""
        return self._detectors.joins_numbers

    def renew(self) -> None:
        """A full budget again, for another walk (the survey's time was its own)."""
        self._deadline = time.monotonic() + self._budget_s

    def scan(self, text: str) -> tuple[str, list[Finding]]:
        hit = self._memo.get(text)
        if hit is None:
            normalized, found = self._detectors.scan_mapped(
                text, max_chars=self._max_chars, deadline=self._deadline
            )
            for f in found:
                self.known.learn(normalized.text[f.start : f.end], f.entity)
            if "<" in text:
                self.placeholders.update(TOKEN_RE.findall(text))
            hit = self._memo[text] = (normalized, found)
        normalized, found = hit
        # Copies are looked for once every value is known: the survey itself needs none (it
        # counts entity types), and a matcher rebuilt per newly found value would cost dearly.
        copies = self.known.find(normalized.text, found) if self.surveyed else []
        if copies:
            found = sorted([*found, *copies], key=lambda f: f.start)
        return text, to_original(normalized, found)


class KnownCopies:
    """A scanner that finds only copies of the values its request's survey found elsewhere:
    for text no detector is asked to scan (a forwarded header the bundle does not name), so
    that a value found anywhere is redacted wherever else the request repeats it."""

    __slots__ = ("_known",)

    def __init__(self, known: KnownValues) -> None:
        self._known = known

    def scan(self, text: str) -> tuple[str, list[Finding]]:
        normalized = normalize_mapped(text)
        return text, to_original(normalized, self._known.find(normalized.text, []))


def survey(privacy: Privacy, ctx: RequestContext, *, document: bool = True) -> Counter[str]:
    """Every entity the request holds, in body (unless `document` is False: nothing in it can
    match), query string and scanned headers; afterwards its scanner knows every value."""
    found: Counter[str] = Counter()
    vault = TokenVault()  # the survey keeps everything; nothing is issued from it
    scanner = ctx.scanner
    scanned = ctx.scanned_document
    if scanned is not None and document:
        redact_json(scanned, privacy.survey, scanner, vault, privacy.hasher, seen=found)
    query = ctx.path.partition("?")[2]
    if query and privacy.bundle.detection.query:
        redact_query(query, privacy.survey, scanner, vault, privacy.hasher, seen=found)
    if not privacy.scanned_headers.isdisjoint(name.lower() for name in ctx.headers):
        redact_headers(ctx.headers, privacy.survey, scanner, vault, privacy.hasher, seen=found)
    scanner.surveyed = True
    return found


def redaction_header(counts: Counter[str]) -> str:
    """`X-Redactions`: entity types and counts, never values."""
    return ",".join(f"{entity}={n}" for entity, n in sorted(counts.items()) if n)
