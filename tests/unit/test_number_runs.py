"""The long numbers of a tensor scanned together give exactly what scanning each alone gives,
without the leaf limit failing long tensors, within a bound on the digits scanned."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.privacy import MemoScanner
from router.redaction import numbers, validators
from router.redaction.actions import Hasher
from router.redaction.detectors import CustomPattern, Detectors
from router.redaction.numbers import holding_findings
from router.redaction.types import Action, DetectionError, Finding
from router.redaction.vault import TokenVault
from router.redaction.walker import FieldRule, RedactionPlan, redact_json

DETECTORS = Detectors.default()
HASHER = Hasher(b"k" * 32)


class PerElement:
    """The scanner as the walk knew it before: it offers no joined scan, so each long
    number is scanned alone (the old path), through the same memo and known values."""

    def __init__(self, inner: MemoScanner) -> None:
        self.scan = inner.scan


def _luhn_completed(prefix: str, length: int, rng: random.Random) -> int:
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return int(body + str((10 - total % 10) % 10))


def _sample(rng: random.Random) -> Any:
    """One element: mostly timestamps and ids, some card numbers (valid or one digit off),
    IBAN-like runs of 20 digits, phone-like and id-like digits, signs, floats, repeats."""
    kind = rng.randrange(12)
    if kind == 0:
        card = _luhn_completed(rng.choice(["4", "51", "34", "6011", "35", "62"]), 16, rng)
        return card if rng.random() < 0.7 else card + 1  # the second fails Luhn
    if kind == 1:
        return rng.randrange(10**19, 10**20)  # IBAN-like digits (a BBAN without its letters)
    if kind == 2:
        return rng.choice([4155552671, 12125551234, 4930123456, 447911123456])  # phone-like
    if kind == 3:
        return rng.choice([44051401359, 123456789, 219099998, 75612345678901])  # id-like
    if kind == 4:
        return -rng.randrange(10**6, 10**17)
    if kind == 5:
        return float(rng.randrange(10**6, 2**53))
    if kind == 6:
        return rng.choice([0.5, 3, -7, 1e300, 12345678.25])
    if kind == 7:
        return 41111111  # half a card number: its neighbour may be the other half
    return 1_700_000_000_000 + rng.randrange(10**6)


def _walks(doc: Any, plan: RedactionPlan, scanner: Any, inner: MemoScanner) -> tuple[Any, ...]:
    """A survey walk (counting what is seen) then a redaction walk, as a request gets them;
    everything either could differ in."""
    seen: Counter[str] = Counter()
    redact_json(doc, RedactionPlan(default=Action.KEEP), scanner, TokenVault(), HASHER, seen=seen)
    inner.surveyed = True
    vault = TokenVault()
    out, counts = redact_json(doc, plan, scanner, vault, HASHER)
    tokens = {t: vault.restore(t) for label, n in vault.counts.items() for t in _issued(label, n)}
    return out, counts, seen, tokens, repr(inner.known), inner.known.find("\n".join(_all(doc)), [])


def _issued(label: str, n: int) -> list[str]:
    return [f"<{label}_{i}>" for i in range(1, n + 1)]


def _all(doc: Any) -> list[str]:
    return [str(x) for x in doc["data"]] + [doc["note"]]


def _both(doc: Any, plan: RedactionPlan) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    old_inner = MemoScanner(DETECTORS, 1_000_000, 60.0)
    new_inner = MemoScanner(DETECTORS, 1_000_000, 60.0)
    return _walks(doc, plan, PerElement(old_inner), old_inner), _walks(
        doc, plan, new_inner, new_inner
    )


PLANS = [
    RedactionPlan(default=Action.TOKENIZE),
    RedactionPlan(default=Action.MASK, actions={"PHONE": Action.KEEP}),
    RedactionPlan(
        default=Action.HASH,
        fields=(FieldRule("data.3", default=Action.DROP, drop_leaf=True),),
    ),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(2, 400),
    plan=st.sampled_from(PLANS),
    note=st.sampled_from(["", "pesel 44051401359", "ssn 219099998", "call 4155552671"]),
)
def test_joined_scan_redacts_exactly_as_the_per_element_scan(
    seed: int, size: int, plan: RedactionPlan, note: str
) -> None:
    """On random tensors with planted cards, IBAN-, phone- and id-like digits, and a text whose
    context makes a number an entity, the one-pass scan gives the per-element scan's redacted
    document, counts, seen entities, tokens and known values."""
    rng = random.Random(seed)
    data = [_sample(rng) for _ in range(size)]
    data += rng.sample(data, min(5, size))  # repeats
    doc = {"note": note, "data": data}
    old, new = _both(doc, plan)
    assert new == old


def test_joined_runs_split_at_their_size_give_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs cut into many small scans (a number per run at most a few) still give the same."""
    monkeypatch.setattr(numbers, "RUN_CHARS", 40)
    rng = random.Random(7)
    doc = {"note": "", "data": [_sample(rng) for _ in range(300)]}
    old, new = _both(doc, RedactionPlan())
    assert new == old
    assert new[1]  # something was redacted


def test_halves_of_a_card_number_side_by_side_are_not_one() -> None:
    """Two elements whose digits together make a Luhn-valid card number are no card: the
    check applies to each number, never to a joined run."""
    doc = {"note": "", "data": [41111111, 11111111, 4111111111111111, 4111, 111111111111]}
    (out, counts, *_), _ = _both(doc, RedactionPlan())
    assert counts == Counter({"CARD": 1})
    assert out["data"] == [41111111, 11111111, "<CARD_1>", 4111, 111111111111]


def test_sixty_thousand_long_numbers_pass_the_leaf_limit_redacted() -> None:
    """60,000 long numbers (more than max_leaves) are scanned, their cards tokenized, the
    other numbers left as they are; scanned one by one they fail closed."""
    rng = random.Random(3)
    data: list[Any] = [float(1_700_000_000_000 + i) for i in range(60_000)]
    planted = sorted(rng.sample(range(60_000), 600))
    for i in planted:
        data[i] = _luhn_completed("4", 16, rng)
    doc = {"data": data}
    scanner = MemoScanner(DETECTORS, 1_000_000, 60.0)
    out, counts = redact_json(doc, RedactionPlan(), scanner, TokenVault(), HASHER)
    assert counts == Counter({"CARD": 600})
    changed = [i for i, (a, b) in enumerate(zip(data, out["data"], strict=True)) if a != b]
    assert changed == planted
    with pytest.raises(DetectionError, match="leaves"):
        redact_json(doc, RedactionPlan(), PerElement(scanner), TokenVault(), HASHER)


def test_the_digits_scanned_together_are_bounded() -> None:
    """Past max_number_chars digits the walk fails closed, saying why."""
    doc = {"a": [1_700_000_000_000] * 10, "b": [1_700_000_000_001] * 10}
    scanner = MemoScanner(DETECTORS, 1_000_000, 60.0)
    plan = RedactionPlan(max_number_chars=14 * 15)
    with pytest.raises(DetectionError, match="more than 210 digits of long numbers"):
        redact_json(doc, plan, scanner, TokenVault(), HASHER)
    redact_json(doc, RedactionPlan(max_number_chars=14 * 20), scanner, TokenVault(), HASHER)


def test_a_tensor_counts_as_one_leaf() -> None:
    """A number tensor counts once against max_leaves, beside the keys and strings around it
    (five leaves: s, "a", t, "b", data)."""
    doc = {"s": "a", "t": "b", "data": [1_700_000_000_000, 1_700_000_000_001]}
    scanner = MemoScanner(DETECTORS, 1_000_000, 60.0)
    redact_json(doc, RedactionPlan(max_leaves=6), scanner, TokenVault(), HASHER)
    with pytest.raises(DetectionError, match="leaves"):
        redact_json(doc, RedactionPlan(max_leaves=5), scanner, TokenVault(), HASHER)


def test_custom_patterns_keep_numbers_scanned_one_by_one() -> None:
    """A bundle pattern anchored on a string's edges finds each number alone, so a scanner
    with custom patterns does not join numbers (joined, the anchors would miss them)."""
    custom = Detectors.default(custom=[CustomPattern("EMPLOYEE", r"^\d{7}$")])
    assert not custom.joins_numbers
    assert DETECTORS.joins_numbers
    scanner = MemoScanner(custom, 1_000_000, 60.0)
    out, counts = redact_json(
        {"data": [1234567, 7654321]}, RedactionPlan(), scanner, TokenVault(), HASHER
    )
    assert counts == Counter({"EMPLOYEE": 2})
    assert out == {"data": ["<EMPLOYEE_1>", "<EMPLOYEE_2>"]}


def test_a_scanner_that_rewrites_the_run_marks_every_number() -> None:
    """A scan whose text no longer matches the joined run cannot be mapped back: every
    number is then scanned alone."""

    def rewriting(text: str) -> tuple[str, list[Finding]]:
        return text.upper() + " ", []

    assert holding_findings(rewriting, ["1234567", "7654321", "1234567"]) == [0, 1, 2]


def test_findings_map_to_the_numbers_they_cover() -> None:
    """A finding marks each number it overlaps, first and last ones included, repeats too."""

    def found_at(*spans: tuple[int, int]) -> Any:
        return lambda text: (text, [Finding("X", a, b) for a, b in spans])

    digits = ["1111111", "2222222", "3333333", "1111111"]  # joined: 0-7, 8-15, 16-23
    assert holding_findings(found_at((0, 7)), digits) == [0, 3]
    assert holding_findings(found_at((20, 23)), digits) == [2]
    assert holding_findings(found_at((5, 10)), digits) == [0, 1, 3]
    assert holding_findings(found_at(), digits) == []


def test_remembered_card_brands_are_the_issuer_ranges() -> None:
    """card_brand, remembered by length and first digits, names the brand a walk over the
    issuer ranges names, for every length and many prefixes."""
    rng = random.Random(11)
    for _ in range(5_000):
        digits = "".join(str(rng.randrange(10)) for _ in range(rng.randrange(10, 21)))
        expected = next(
            (
                brand
                for brand, ranges, lengths in validators.CARD_BRANDS
                if len(digits) in lengths
                for low, high in ranges
                if low <= digits[: len(low)] <= high
            ),
            None,
        )
        assert validators.card_brand(digits) == expected, digits
