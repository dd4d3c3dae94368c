"""Apply a redaction plan to everything a request carries: JSON bodies, query strings, headers.

Every string leaf is scanned at any depth, object keys included; strings that hold a JSON
document themselves (tool-call arguments) are parsed and redacted inside; large integers are
scanned as digits (a card number sent as a JSON number), floats as the integer part they are
written with (4111111111111111.0, as tritonclient writes FP64, or 4111111111111111.5). The
input is never mutated and the work is bounded: past ``max_depth`` or ``max_leaves`` a
DetectionError fails the request closed.
The long numbers of a number array (tensor data) are scanned together (``numbers.py``): the
array counts as one leaf, and its digits count against ``max_number_chars`` instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode

import orjson

from router.redaction.actions import Hasher, action_for, apply
from router.redaction.json_text import may_hide
from router.redaction.numbers import (
    MIN_SCANNED_INT,
    digits_of,
    holding_findings,
    joins_numbers,
    large_numbers,
    scanned_float,
)
from router.redaction.types import Action, DetectionError, Finding
from router.redaction.vault import TokenVault

# A round's replacements can join neighbours into a new match (a dropped value between two
# halves of a card number); rescanning until nothing changes keeps redaction idempotent.
MAX_ROUNDS = 4
_RAW_BYTES = "surrogateescape"


class Scanner(Protocol):
    """Finds entities: returns the text the findings' offsets refer to (the input itself, or a
    normalised form of it, which is then what goes on) and the findings."""

    def scan(self, text: str) -> tuple[str, list[Finding]]: ...


@dataclass(frozen=True, slots=True)
class FieldRule:
    """Actions for the fields under a glob path such as ``messages.*.content``.

    Segments are dict keys or list indices; ``*`` matches one segment (fnmatch patterns work
    within a segment), ``**`` any number. A rule covers the subtree below its path; when
    several match, the deepest wins, then the first listed. ``drop_leaf`` removes a whole leaf
    once any of its findings resolves to drop (list elements become "" so shapes hold).
    """

    path: str
    actions: Mapping[str, Action] = field(default_factory=dict)
    default: Action | None = None
    drop_leaf: bool = False


@dataclass(frozen=True, slots=True)
class RedactionPlan:
    """What to do with each entity, per field path, for one destination's view of a request."""

    actions: Mapping[str, Action] = field(default_factory=dict)
    default: Action = Action.TOKENIZE
    fields: tuple[FieldRule, ...] = ()
    drop_fields: tuple[str, ...] = ()  # glob paths removed entirely, unscanned
    headers: tuple[str, ...] = ()  # header names (any case) whose values are scanned
    max_depth: int = 64
    max_leaves: int = 50_000
    # Digits (one separator each) of the numbers scanned together, per walk: 8 MiB holds every
    # long number a 4 MiB JSON body can carry, and ~400k 20-digit INT64 elements.
    max_number_chars: int = 8 << 20


def redact_json(
    doc: Any,
    plan: RedactionPlan,
    scanner: Scanner,
    vault: TokenVault,
    hasher: Hasher,
    *,
    seen: Counter[str] | None = None,
) -> tuple[Any, Counter[str]]:
    """A redacted copy of a parsed JSON document, and redactions per entity.

    ``seen``, when given, also counts every entity detected, kept ones included (for
    classification).
    """
    walk = _Walk(plan, scanner, vault, hasher, seen)
    root = _Rule(plan.actions, plan.default, drop_leaf=False)
    new = walk.value(doc, (), 0, walk.rule_at((), root))
    return (None if new is _DROPPED else new), walk.counts


def redact_query(
    query: str,
    plan: RedactionPlan,
    scanner: Scanner,
    vault: TokenVault,
    hasher: Hasher,
    *,
    seen: Counter[str] | None = None,
) -> tuple[str, Counter[str]]:
    """A query string (without '?') with names and values redacted; unchanged if clean."""
    try:
        # Bytes that are no UTF-8 (a Latin-1 form's %E9) are kept as surrogates and written
        # back as the same bytes: read as U+FFFD they would go on as three other bytes.
        pairs = parse_qsl(
            query, keep_blank_values=True, max_num_fields=plan.max_leaves, errors=_RAW_BYTES
        )
    except ValueError:
        raise DetectionError("the query string has too many fields to scan") from None
    walk = _Walk(plan, scanner, vault, hasher, seen)
    rule = _Rule(plan.actions, plan.default, drop_leaf=False)
    new = [(walk.text(name, rule), walk.text(value, rule)) for name, value in pairs]
    if not walk.counts:
        return query, walk.counts
    return urlencode(new, errors=_RAW_BYTES), walk.counts


def redact_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    plan: RedactionPlan,
    scanner: Scanner,
    vault: TokenVault,
    hasher: Hasher,
    *,
    seen: Counter[str] | None = None,
) -> tuple[list[tuple[str, str]], Counter[str]]:
    """Headers (repeats and order kept) with the plan's named headers redacted.

    A header whose value is redacted down to nothing is left out.
    """
    names = {name.lower() for name in plan.headers}
    items = headers.items() if isinstance(headers, Mapping) else headers
    walk = _Walk(plan, scanner, vault, hasher, seen)
    rule = _Rule(plan.actions, plan.default, drop_leaf=False)
    out: list[tuple[str, str]] = []
    for name, value in items:
        if name.lower() in names:
            value = walk.text(value, rule)
            if not value.strip():
                continue
        out.append((name, value))
    return out, walk.counts


@dataclass(frozen=True, slots=True)
class _Rule:
    actions: Mapping[str, Action]
    default: Action
    drop_leaf: bool


class _Dropped:
    """Marks a member the walk removes."""


_DROPPED: Any = _Dropped()


class _Walk:
    """The state of one walk: counts, the leaf budget and the plan's compiled paths."""

    def __init__(
        self,
        plan: RedactionPlan,
        scanner: Scanner,
        vault: TokenVault,
        hasher: Hasher,
        seen: Counter[str] | None,
    ) -> None:
        self.plan = plan
        self.scanner = scanner
        self.vault = vault
        self.hasher = hasher
        self.seen = seen
        self.counts: Counter[str] = Counter()
        self.leaves = 0
        self.number_chars = 0
        self.drops = [_compile(p) for p in plan.drop_fields]
        # Each rule's actions merged over the plan's once, not at every node it matches.
        self.rules = [
            (
                _compile(r.path),
                _Rule({**plan.actions, **r.actions}, r.default or plan.default, r.drop_leaf),
            )
            for r in plan.fields
        ]

    def rule_at(self, path: tuple[str, ...], inherited: _Rule) -> _Rule:
        """The first rule whose path matches here exactly, else the one from above."""
        for pattern, rule in self.rules:
            if _match(pattern, path):
                return rule
        return inherited

    def value(self, v: Any, path: tuple[str, ...], depth: int, rule: _Rule) -> Any:
        if depth > self.plan.max_depth:
            raise DetectionError(f"the document is nested deeper than {self.plan.max_depth}")
        if isinstance(v, str):
            return self.string(v, path, depth, rule)
        if isinstance(v, dict):
            return self.object(v, path, depth, rule)
        if isinstance(v, list):
            return self.array(v, path, depth, rule)
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= MIN_SCANNED_INT:
            # A number with an entity in its digits goes on as the redacted string.
            digits = str(v)
            redacted = self.leaf(digits, rule)
            return v if redacted is digits else redacted
        if isinstance(v, float) and scanned_float(v):
            digits = str(int(v))
            redacted = self.leaf(digits, rule)
            return v if redacted is digits else redacted
        if v is None or isinstance(v, int | float):
            return v
        # Not a JSON value: it cannot be scanned, so it cannot go on.
        raise DetectionError(f"cannot scan a value of type {type(v).__name__}")

    def object(self, v: dict[Any, Any], path: tuple[str, ...], depth: int, rule: _Rule) -> Any:
        out: dict[Any, Any] = {}
        for key, member in v.items():
            sub = (*path, str(key))
            if self._dropped(sub):
                continue
            new_key = self.leaf(key, rule) if isinstance(key, str) else key
            if new_key is _DROPPED:
                continue
            new = self.value(member, sub, depth + 1, self.rule_at(sub, rule))
            if new is _DROPPED:
                continue
            if new_key in out:
                # Two keys redacted to the same text: merging them would lose data silently.
                raise DetectionError("redacted object keys collide")
            out[new_key] = new
        return out

    def array(self, v: list[Any], path: tuple[str, ...], depth: int, rule: _Rule) -> Any:
        if depth < self.plan.max_depth and not self._may_drop_child(path):
            large = large_numbers(v)
            if large is not None:
                # Tensor data: nothing in it is dropped or too deep, and only integers long
                # enough to hold an entity are scanned (a 1 MB INT64 tensor holding one card
                # number costs a pass over its elements, not a walk of each).
                copy = list(v)
                for index in self.numbers_to_scan(v, large):
                    sub = (*path, str(index))
                    new = self.value(v[index], sub, depth + 1, self.rule_at(sub, rule))
                    copy[index] = "" if new is _DROPPED else new
                return copy
        out: list[Any] = []
        for index, item in enumerate(v):
            sub = (*path, str(index))
            if self._dropped(sub):
                continue
            new = self.value(item, sub, depth + 1, self.rule_at(sub, rule))
            out.append("" if new is _DROPPED else new)
        return out

    def numbers_to_scan(self, items: list[Any], large: list[int]) -> list[int]:
        """Of the long numbers of a number array, those to scan one by one: the ones a scan of
        them all together finds something in (router.redaction.numbers), when the scanner
        can do that; the array is one leaf, its digits count against max_number_chars."""
        if len(large) < 2 or not joins_numbers(self.scanner):
            return large
        self.count_leaf()
        digits = digits_of(items, large)
        self.number_chars += sum(map(len, digits)) + len(digits)
        if self.number_chars > self.plan.max_number_chars:
            raise DetectionError(
                f"the request holds more than {self.plan.max_number_chars} digits of long"
                " numbers to scan"
            )
        return [large[k] for k in holding_findings(self._scan, digits)]

    def count_leaf(self) -> None:
        self.leaves += 1
        if self.leaves > self.plan.max_leaves:
            raise DetectionError(f"the request has more than {self.plan.max_leaves} leaves")

    def string(self, s: str, path: tuple[str, ...], depth: int, rule: _Rule) -> Any:
        if s.lstrip()[:1] in ("{", "["):
            # A JSON document inside a string (tool-call arguments): escapes would hide values
            # from a scan of its source text, so redact the parsed document instead.
            try:
                inner = orjson.loads(s)
            except orjson.JSONDecodeError:
                inner = None
            if isinstance(inner, dict | list):
                new = self.value(inner, path, depth + 1, rule)
                if new != inner:
                    return orjson.dumps(new).decode()
                if not may_hide(s, inner):
                    return s
                # Nothing redacted, yet the text may hold more than its parse (a duplicate
                # key's first value, a float literal's digits its value does not keep:
                # 4111111111111111.9): only what was scanned, the parse, goes on.
                _note_rewrite(self.scanner)
                return s if _keeps_all(rule) else orjson.dumps(inner).decode()
        return self.leaf(s, rule)

    def leaf(self, s: str, rule: _Rule) -> Any:
        """One string through the scanner; _DROPPED when the rule drops the whole leaf."""
        self.count_leaf()
        current = s
        for round_ in range(MAX_ROUNDS):
            normalised, findings = self._scan(current)
            if round_ == 0 and self.seen is not None:
                self.seen.update(f.entity for f in findings)
            actions = [action_for(f.entity, rule.actions, rule.default) for f in findings]
            if all(a == Action.KEEP for a in actions):
                return current
            if rule.drop_leaf and Action.DROP in actions:
                kept = zip(findings, actions, strict=True)
                self.counts.update(f.entity for f, a in kept if a != Action.KEEP)
                return _DROPPED
            redacted, counts = apply(
                normalised, findings, rule.actions, self.vault, self.hasher, rule.default
            )
            if not counts:
                return current  # what is left stays as it is (a pseudonym hashed again)
            current = redacted
            self.counts.update(counts)
        raise DetectionError("redaction did not settle")

    def text(self, s: str, rule: _Rule) -> str:
        """A free-standing string (query part, header value): a dropped leaf becomes ""."""
        new = self.leaf(s, rule)
        return "" if new is _DROPPED else str(new)

    def _scan(self, text: str) -> tuple[str, list[Finding]]:
        try:
            return self.scanner.scan(text)
        except DetectionError:
            raise
        except Exception as exc:
            # A detector bug must block forwarding, not let the text through. `from None`: the
            # original error may quote the text it choked on.
            raise DetectionError(f"a detector failed ({type(exc).__name__})") from None

    def _dropped(self, path: tuple[str, ...]) -> bool:
        return any(_match(pattern, path) for pattern in self.drops)

    def _may_drop_child(self, path: tuple[str, ...]) -> bool:
        """Whether a drop pattern may match a member of the container at `path`: one as
        long as such a member's path whose other segments match, or one with `**` (a bundle's
        `user` or `metadata.customer_email` never reach a tensor's elements)."""
        return any(
            "**" in pattern or (len(pattern) == len(path) + 1 and _match(pattern[:-1], path))
            for pattern in self.drops
        )


def _keeps_all(rule: _Rule) -> bool:
    return rule.default == Action.KEEP and all(a == Action.KEEP for a in rule.actions.values())


def _note_rewrite(scanner: Scanner) -> None:
    """Tells a scanner that keeps track (privacy.MemoScanner) that a string went on changed
    though nothing in it was redacted."""
    if hasattr(scanner, "rewrites"):
        setattr(scanner, "rewrites", True)  # noqa: B010  (not part of the Scanner protocol)


@lru_cache(maxsize=256)
def _compile(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("."))


def _match(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Whether a glob path matches a path exactly (``**`` spans any number of segments)."""
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(rest, path[i:]) for i in range(len(path) + 1))
    if not path:
        return False
    if head != "*" and head != path[0] and not fnmatchcase(path[0], head):
        return False
    return _match(rest, path[1:])
