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

# Integers below this have too few digits to be any entity we detect (phones start at 7).
MIN_SCANNED_INT = 1_000_000
# Floats below this are scanned as the integer part they are written with (a card number is
# exact in FP64, and tritonclient writes an FP64 tensor's 4111111111111111 as
# 4111111111111111.0; one with a fraction, 4111111111111111.5, shows the same digits). Up to
# it, orjson (what goes upstream) and Python write every integer digit, past 2**53 too
# (9792000000000052.0, a Troy card); from it on, an exponent (6.011e+18): no digits a
# client's number had.
FLOAT_DIGITS_END = 1e16
# A float with a fraction is scanned only from 12 integer digits on (the shortest card number):
# shorter ones with a fraction are readings (epoch seconds, 1.7e9), the common large float, not
# an entity's digits; an integral float is scanned from MIN_SCANNED_INT, as an integer is.
MIN_SCANNED_FRACTIONAL = 1e11
_MIN_FLOAT = float(MIN_SCANNED_INT)

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


# Which numbers are scanned at all: shared by the JSON walk and the binary tensors' check
# (router.v2.inline), so that a tensor gets the same verdict in either form.
def scanned_float(v: float) -> bool:
    """Whether a float is scanned as the integer part it is written with: as many digits as
    a scanned integer (12 with a fraction), and all of them written out (FLOAT_DIGITS_END)."""
    size = abs(v)
    return MIN_SCANNED_INT <= size < FLOAT_DIGITS_END and (
        size >= MIN_SCANNED_FRACTIONAL or v.is_integer()
    )


def large_numbers(items: list[Any]) -> list[int] | None:
    """The indices of the numbers the JSON walk scans (integers of MIN_SCANNED_INT or more in
    magnitude, floats as scanned_float says) when every item is a float or an integer; None
    when any is something else (walked one by one)."""
    large = []
    # Float bounds in locals: most tensor floats are small, and this one comparison (no
    # global lookups, no int-float conversion, no call) is all they cost.
    low, high, most, whole = -_MIN_FLOAT, _MIN_FLOAT, FLOAT_DIGITS_END, MIN_SCANNED_FRACTIONAL
    for index, item in enumerate(items):
        kind = type(item)
        if kind is float:
            if low < item < high:
                continue
            # scanned_float, inlined (NaN compares false)
            if -most < item < most and (not -whole < item < whole or item.is_integer()):
                large.append(index)
            continue
        if kind is not int:
            return None
        if not -MIN_SCANNED_INT < item < MIN_SCANNED_INT:
            large.append(index)
    return large
