"""The long numbers of a tensor scanned together: their digits joined into runs, each run one
pass of the detectors, each finding mapped back to the numbers it covers.

Scanned one by one, every number of 7 digits or more costs a whole scan (normalising, the
prefilter, each detector's setup: ~12 us), which made a tensor of 40,000 timestamps cost half
a second. Joined by a comma, the same detectors find the same values in one pass: no built-in
pattern matches across a comma between digits (card, phone and id patterns allow only spaces,
tabs, dashes, dots, slashes, parentheses or line breaks inside a value), and every one of
them bounds a value at a comma as at a text's edge (``(?:^|[^\\w])``-style alternatives, the
phone veto looks for a digit before a space, dash or dot). Context words are letters, which
digits and commas never hold; a checksum (Luhn) is applied to a match, which never spans two
numbers. A finding here only marks its numbers: each marked number is then scanned alone,
exactly as before, so what is redacted, counted and learned is what the one-by-one scan gives;
every other number had no finding alone either, and is left as it is. A bundle's custom
pattern may match across a comma or anchor on a string's edges, so a scanner with custom
patterns says it does not join (``joins_numbers``), and numbers are scanned one by one.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from router.redaction.types import Finding

SEPARATOR = ","
# Digits per scan: well under any scanner's size cap, and small enough that the joined text
# held in a scanner's memo stays a fraction of the body it came from.
RUN_CHARS = 64 * 1024

Scan = Callable[[str], tuple[str, list[Finding]]]


def joins_numbers(scanner: Any) -> bool:
    """Whether a scanner finds in numbers joined by SEPARATOR what it finds in each alone."""
    return getattr(scanner, "joins_numbers", False) is True


def digits_of(items: Sequence[Any], indices: Sequence[int]) -> list[str]:
    """The digits the walk scans for each indexed number (a float as its integer part)."""
    return [str(items[i]) if type(items[i]) is int else str(int(items[i])) for i in indices]


def holding_findings(scan: Scan, digits: Sequence[str]) -> list[int]:
    """The positions in `digits` of the numbers a scan finds something in, the numbers
    scanned in runs (each distinct number once, in order of first appearance)."""
    distinct = list(dict.fromkeys(digits))
    marked: set[str] = set()
    for run in _runs(distinct):
        marked.update(_marked(scan, run))
    if not marked:
        return []
    return [k for k, d in enumerate(digits) if d in marked]


def _runs(distinct: list[str]) -> Iterator[list[str]]:
    start, size = 0, 0
    for end, text in enumerate(distinct):
        if size and size + len(text) + 1 > RUN_CHARS:
            yield distinct[start:end]
            start, size = end, 0
        size += len(text) + 1
    if start < len(distinct):
        yield distinct[start:]


def _marked(scan: Scan, run: list[str]) -> list[str]:
    """The numbers of one run that a finding in the joined run covers."""
    text = SEPARATOR.join(run)
    scanned, findings = scan(text)
    if scanned != text:
        return run  # offsets no longer line up with the numbers: each is scanned alone
    if not findings:
        return []
    starts, offset = [], 0
    for number in run:
        starts.append(offset)
        offset += len(number) + 1
    marked: list[str] = []
    for finding in findings:
        first = bisect_right(starts, finding.start) - 1
        last = bisect_right(starts, max(finding.start, finding.end - 1)) - 1
        marked.extend(run[max(first, 0) : last + 1])
    return marked
