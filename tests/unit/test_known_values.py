"""KnownValues: a request's found values, looked for again as literal copies."""

from __future__ import annotations

import pytest

from router.privacy import MemoScanner
from router.redaction import known as known_module
from router.redaction.detectors import Detectors
from router.redaction.known import MAX_KNOWN_VALUES, MIN_KNOWN_CHARS, KnownValues
from router.redaction.types import Finding


def test_copies_are_found_longest_first() -> None:
    """Each copy is a finding of its value's entity; of two overlapping values the longer wins."""
    known = KnownValues()
    known.learn("536221234", "US_SSN")
    known.learn("5362212345", "PHONE")
    found = known.find("a 536221234 b 5362212345", [])
    assert found == [Finding("US_SSN", 2, 11), Finding("PHONE", 14, 24)]


def test_short_values_and_found_spans_are_skipped() -> None:
    """Values too short to look for are not learned; copies inside a detector's finding are
    left to it."""
    known = KnownValues()
    known.learn("x" * (MIN_KNOWN_CHARS - 1), "EMAIL")
    assert len(known) == 0
    known.learn("86095742719", "NATIONAL_ID")
    assert known.find("id 86095742719", [Finding("CARD", 0, 14)]) == []


def test_repr_never_shows_values() -> None:
    """A KnownValues in a log line or an error shows a count only."""
    known = KnownValues()
    known.learn("86095742719", "NATIONAL_ID")
    assert "86095742719" not in repr(known)


def test_many_values_compile_one_bounded_matcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request holding a thousand e-mails learns at most MAX_KNOWN_VALUES of them and builds
    its matcher once, after the survey, not once per value found."""
    scanner = MemoScanner(Detectors.default(), 1_000_000, 30.0)
    compiled: list[object] = []
    real = known_module.re2.compile

    def counting(*args: object) -> object:
        compiled.append(args)
        return real(*args)

    monkeypatch.setattr(known_module.re2, "compile", counting)
    texts = [f"row {i}: user{i}.x@example.org" for i in range(1000)]
    for text in texts:  # the survey
        scanner.scan(text)
    assert compiled == []
    scanner.surveyed = True
    for text in texts:  # a redaction walk
        assert scanner.scan(text)[1]
    assert len(compiled) == 1
    assert len(scanner.known) == MAX_KNOWN_VALUES


def test_overlap_check_is_per_copy_not_per_pair() -> None:
    """Copies are checked against the detectors' findings by position (a bisection), so a
    string with thousands of both stays linear: only spans overlapping a finding drop out."""
    known = KnownValues()
    known.learn("86095742719", "NATIONAL_ID")
    text = " ".join(["86095742719"] * 4000)
    besides = [Finding("CARD", i * 12, i * 12 + 11) for i in range(0, 4000, 2)]
    copies = known.find(text, besides)
    assert [c.start for c in copies] == [i * 12 for i in range(1, 4000, 2)]
