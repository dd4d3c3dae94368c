"""KnownValues: a request's found values, looked for again as literal copies."""

from __future__ import annotations

from router.redaction.known import MIN_KNOWN_CHARS, KnownValues
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
