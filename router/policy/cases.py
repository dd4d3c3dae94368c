"""Decision cases: a bundle's own tests, kept as data in `<bundle>/cases/*.yaml`.

Each case describes a request (the class it starts with, an X-Data-Class header, text, a JSON
body, a query string, headers, or entities taken as found) and where it comes from, and states
what the bundle must make of it: its data class, the entities found, which destinations
(`{tier, jurisdictions}`) it may reach, and what each tier's redacted view may or must contain.
Detection, classification, residency and redaction are the router's own functions, so a case
that passes here holds at run time. `layer-router check` runs them.

    cases:
      - name: email-stays-in-jurisdiction
        request: {text: ["write to jane@example.com"]}
        origin: EU
        expect:
          data_class: personal
          entities: [EMAIL]
          permits:
            - {tier: central, jurisdictions: [EU], allow: true}
            - {tier: central, jurisdictions: [US], allow: false}
          redaction:
            central: {absent: [jane@example.com], present: ["<EMAIL_1>"], counts: {EMAIL: 1}}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from router import yamlconf
from router.errors import ConfigError
from router.policy.bundle import PolicyBundle
from router.policy.case_file import Case, CaseFile, CaseRequest, RedactionExpectation
from router.policy.model import TIERS
from router.policy.residency import classify, permits, strictest
from router.privacy import MemoScanner, Privacy
from router.redaction.types import DetectionError, Entity
from router.redaction.vault import TokenVault
from router.redaction.walker import RedactionPlan, redact_headers, redact_json, redact_query

CASES_DIR = "cases"
# Cases are checks, not traffic: a slow machine must not turn one into a detection failure.
SCAN_BUDGET_S = 60.0


@dataclass(frozen=True, slots=True)
class LoadedCase:
    case: Case
    source: Path  # the file it came from

    @property
    def name(self) -> str:
        return self.case.name


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    ok: bool
    problems: tuple[str, ...]
    source: Path | None = None


def load_cases(bundle: PolicyBundle) -> list[LoadedCase]:
    """Every case of the bundle, in file then listed order (ConfigError naming file and key for
    a malformed file, an unknown tier, class or entity, or a name used twice)."""
    folder = bundle.path / CASES_DIR
    if not folder.is_dir():
        return []
    loaded: list[LoadedCase] = []
    seen: dict[str, Path] = {}
    for file in sorted(folder.glob("*.y*ml")):
        cases = yamlconf.load(file, CaseFile).cases
        problems = _cross_check(bundle, cases)
        for i, case in enumerate(cases):
            if case.name in seen:
                problems.append(
                    f"cases.{i}.name: {case.name!r} is also a case in {seen[case.name]}"
                )
            seen.setdefault(case.name, file)
        if problems:
            raise ConfigError(str(file), problems)
        loaded.extend(LoadedCase(case, file) for case in cases)
    return loaded


def run_cases(bundle: PolicyBundle, privacy: Privacy | None = None) -> list[CaseResult]:
    """Every case of the bundle run against its rules (`privacy` defaults to one built from the
    bundle with a throwaway hashing key: pseudonyms are checked by shape, not value)."""
    cases = load_cases(bundle)
    if not cases:
        return []
    privacy = privacy or Privacy.build(bundle, None)
    return [run_case(loaded, privacy) for loaded in cases]


def run_case(loaded: LoadedCase, privacy: Privacy) -> CaseResult:
    case, bundle = loaded.case, privacy.bundle
    request, expect = case.request, case.expect
    tenant = bundle.tenants.data_class_of(request.tenant or "") or bundle.data_classes.default
    declared = request.declared or tenant
    if request.x_data_class is not None:
        declared = strictest(bundle, [declared, request.x_data_class])
    problems: list[str] = []
    scanner = MemoScanner(privacy.detectors, bundle.detection.max_body_bytes, SCAN_BUDGET_S)
    try:
        found = Counter[str]()
        _redacted(request, privacy, privacy.survey, scanner, TokenVault(), found)
        scanner.surveyed = True  # as at run time: every value known before any tier's walk
        # One per request, as at run time: a value keeps its token across tiers.
        vault = TokenVault(reserved=scanner.placeholders)
        entities = frozenset(found) | frozenset(request.entities)
        data_class = classify(bundle, declared, entities)
        if expect.data_class is not None and data_class != expect.data_class:
            problems.append(f"data class is {data_class}, expected {expect.data_class}")
        if expect.entities is not None and entities != frozenset(expect.entities):
            problems.append(f"entities are {_names(entities)}, expected {_names(expect.entities)}")
        for want in expect.permits:
            allowed = permits(
                bundle,
                declared=declared,
                entities=entities,
                tier=want.tier,
                jurisdictions=frozenset(want.jurisdictions),
                origin=case.origin,
                hosts=frozenset(host.lower() for host in want.endpoints),
            )
            if allowed != want.allow:
                where = f"{want.tier} in [{', '.join(want.jurisdictions)}]"
                if want.endpoints:
                    where += f" on [{', '.join(want.endpoints)}]"
                verdict = "allowed" if allowed else "denied"
                problems.append(f"{where} is {verdict}, expected the opposite")
        for tier, want_view in expect.redaction.items():
            problems += _check_view(tier, want_view, request, privacy, scanner, vault)
    except DetectionError as exc:
        problems.append(f"detection failed: {exc}")
    return CaseResult(case.name, not problems, tuple(problems), loaded.source)


def _check_view(
    tier: str,
    want: RedactionExpectation,
    request: CaseRequest,
    privacy: Privacy,
    scanner: MemoScanner,
    vault: TokenVault,
) -> list[str]:
    view, counts = _redacted(request, privacy, privacy.plans[tier], scanner, vault)
    problems = [f"{tier}: {text!r} is still there" for text in want.absent if text in view]
    problems += [f"{tier}: {text!r} is missing" for text in want.present if text not in view]
    if want.counts is not None:
        expected = {k: n for k, n in want.counts.items() if n}
        actual = {k: n for k, n in counts.items() if n}
        if actual != expected:
            problems.append(
                f"{tier}: redactions are {_counts(actual)}, expected {_counts(expected)}"
            )
    return problems


def _redacted(
    request: CaseRequest,
    privacy: Privacy,
    plan: RedactionPlan,
    scanner: MemoScanner,
    vault: TokenVault,
    seen: Counter[str] | None = None,
) -> tuple[str, Counter[str]]:
    """Everything the request carries, as one text, after `plan`; and the redactions made."""
    hasher = privacy.hasher
    counts: Counter[str] = Counter()
    parts: list[str] = []
    if request.body is not None:
        body, found = redact_json(request.body, plan, scanner, vault, hasher, seen=seen)
        parts.append(orjson.dumps(body).decode())
        counts += found
    for text in request.text:
        new, found = redact_json(text, plan, scanner, vault, hasher, seen=seen)
        parts.append(new if isinstance(new, str) else "")
        counts += found
    if request.query and privacy.bundle.detection.query:
        query, found = redact_query(request.query, plan, scanner, vault, hasher, seen=seen)
        parts.append(query)
        counts += found
    if request.headers:
        pairs, found = redact_headers(request.headers, plan, scanner, vault, hasher, seen=seen)
        parts += [f"{name}: {value}" for name, value in pairs]
        counts += found
    return "\n".join(parts), counts


def _cross_check(bundle: PolicyBundle, cases: Iterable[Case]) -> list[str]:
    classes = set(bundle.data_classes.classes)
    entities = {e.value for e in Entity} | {c.name for c in bundle.detection.custom}
    problems: list[str] = []
    for i, case in enumerate(cases):
        at = f"cases.{i}"
        request, expect = case.request, case.expect
        named = {
            f"{at}.request.declared": request.declared,
            f"{at}.request.x_data_class": request.x_data_class,
            f"{at}.expect.data_class": expect.data_class,
        }
        problems += [
            f"{key}: unknown data class {value!r}; known: {', '.join(bundle.data_classes.classes)}"
            for key, value in named.items()
            if value is not None and value not in classes
        ]
        if request.tenant is not None and request.tenant not in bundle.tenants.tenants:
            problems.append(f"{at}.request.tenant: unknown tenant {request.tenant!r}")
        listed = {
            f"{at}.request.entities": request.entities,
            f"{at}.expect.entities": expect.entities or (),
            **{
                f"{at}.expect.redaction.{tier}.counts": tuple(want.counts or ())
                for tier, want in expect.redaction.items()
            },
        }
        problems += [
            f"{key}: unknown entity {name!r}"
            for key, names in listed.items()
            for name in names
            if name not in entities
        ]
        tiers = {f"{at}.expect.permits.{j}.tier": p.tier for j, p in enumerate(expect.permits)}
        tiers.update({f"{at}.expect.redaction.{tier}": tier for tier in expect.redaction})
        problems += [
            f"{key}: unknown tier {tier!r}; known: {', '.join(TIERS)}"
            for key, tier in tiers.items()
            if tier not in TIERS
        ]
        bad = _not_json(request.body, f"{at}.request.body")
        if bad is not None:
            problems.append(f"{bad}: not a JSON value (quote dates and other YAML scalars)")
    return problems


def _not_json(value: Any, at: str) -> str | None:
    """Where in `value` something is not plain JSON (YAML also reads dates, sets, ...)."""
    if isinstance(value, dict):
        for key, member in value.items():
            if not isinstance(key, str):
                return f"{at}.{key}"
            bad = _not_json(member, f"{at}.{key}")
            if bad is not None:
                return bad
        return None
    if isinstance(value, list):
        return next(
            (b for i, m in enumerate(value) if (b := _not_json(m, f"{at}.{i}")) is not None), None
        )
    return None if value is None or isinstance(value, str | int | float) else at


def _names(entities: Iterable[str]) -> str:
    return "[" + ", ".join(sorted(entities)) + "]"


def _counts(counts: Mapping[str, int]) -> str:
    return "{" + ", ".join(f"{k}={n}" for k, n in sorted(counts.items())) + "}"
