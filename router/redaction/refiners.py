"""What a built-in detector's match must pass beyond its pattern: refiners that find the values
inside a match (cards in a run of digit groups), validators (phone shapes, IPv6, dates of
birth) and vetoes on the text before a value."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from router.redaction import validators as v
from router.redaction.types import DetectionError

# ---------------------------------------------------------------------------- refiners

_GROUP = re.compile(r"\d+")
# Digit groups between two deadline checks: one match may be a run of 100,000 card numbers.
_CHECK_EVERY = 1024


def _check_deadline(deadline: float | None, step: int) -> None:
    if (
        deadline is not None
        and step % _CHECK_EVERY == _CHECK_EVERY - 1
        and time.monotonic() > deadline
    ):
        raise DetectionError("detection deadline passed")


def _separator_kind(sep: str) -> str:
    """A separator's kind: its dash, dot or slash, or white space of any width (a line that
    wraps inside a number written with spaces keeps it one number)."""
    for mark in "-./+":
        if mark in sep:
            return mark
    return " "


def _groups(value: str, end: int, deadline: float | None) -> list[tuple[int, int]]:
    """The spans of the digit groups in value[:end]."""
    groups: list[tuple[int, int]] = []
    for k, m in enumerate(_GROUP.finditer(value, 0, end)):
        _check_deadline(deadline, k)
        groups.append(m.span())
    return groups


def card_refine(value: str, *, deadline: float | None = None) -> list[tuple[int, int]]:
    """Card numbers inside a run of digit groups: one group of 12-19 digits, or a first group
    of 4 then groups of 1-7 with one separator kind, 12-19 digits in all, longest first."""
    if value.isascii() and value.isdigit():
        # One group, the common case (a number's digits, each element of a tensor): the loop
        # below would check just this.
        return [(0, len(value))] if 12 <= len(value) <= 19 and v.is_card(value) else []
    groups = _groups(value, len(value), deadline)
    if sum(b - a for a, b in groups) < 12:
        return []
    found: list[tuple[int, int]] = []
    i, n = 0, len(groups)
    # The kind of the separator before each group after the first.
    kinds: list[str] = []
    for k in range(1, n):
        _check_deadline(deadline, k)
        kinds.append(_separator_kind(value[groups[k - 1][1] : groups[k][0]]))
    while i < n:
        _check_deadline(deadline, i)
        gs, ge = groups[i]
        hit = -1
        if ge - gs == 4:
            sep = kinds[i] if i + 1 < n else ""
            digits = value[gs:ge]
            for j in range(i + 1, min(i + 6, n)):
                a, b = groups[j]
                if kinds[j - 1] != sep or b - a > 7:
                    break
                digits += value[a:b]
                if len(digits) > 19:
                    break
                if len(digits) >= 12 and v.is_card(digits):
                    hit = j
        elif 12 <= ge - gs <= 19 and v.is_card(value[gs:ge]):
            hit = i
        if hit >= 0:
            found.append((gs, groups[hit][1]))
            i = hit + 1
        else:
            i += 1
    return found


_EXTENSION = re.compile(r"\s?(?:x|ext\.?|extension)\s?\d{1,6}$", re.IGNORECASE)
_DATE_LIKE = re.compile(
    r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./](?:\d{4}|\d{2}))(?:[ T]|$)"
)
_IP_LIKE = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")


def phone_ok(value: str, lenient: bool = False) -> bool:
    """Digit counts and shapes that phone numbers have and dates, IPs and plain IDs do not.

    ``lenient`` (a word such as "phone" is next to it): any 7-15 digits that are not a date."""
    main = _EXTENSION.sub("", value)
    if _DATE_LIKE.match(main) or _IP_LIKE.match(main) or main.count("(") != main.count(")"):
        return False
    digits = "".join(ch for ch in main if ch.isdigit())
    if lenient:
        return 7 <= len(digits) <= 15
    if main.startswith(("+", "00")):
        national = digits[2:] if main.startswith("00") else digits
        cc = v.calling_code_length(national)
        trunk = main.find("(0)") >= 0
        return cc > 0 and 7 <= len(national) - cc - trunk <= 14 and len(national) - trunk <= 15
    return 7 <= len(digits) <= 13


def phone_refine(
    value: str, lenient: bool = False, *, deadline: float | None = None
) -> list[tuple[int, int]]:
    """Phone numbers in a run of digit groups: from each group, the longest valid number."""
    ext = _EXTENSION.search(value)
    main_end = ext.start() if ext is not None else len(value)
    groups = _groups(value, main_end, deadline)
    found: list[tuple[int, int]] = []
    i = 0
    while i < len(groups):
        _check_deadline(deadline, i)
        start = groups[i][0]
        if start >= 2 and value[start - 2 : start] == "+ ":
            start -= 2
        while start > 0 and value[start - 1] in "+(":
            start -= 1
        ends: list[tuple[int, int]] = []
        digits = 0
        for j in range(i, len(groups)):
            digits += groups[j][1] - groups[j][0]
            if digits > 17:
                break
            if digits >= 7:
                ends.append((j, groups[j][1]))
        if ends and ends[-1][0] == len(groups) - 1 and ext is not None:
            ends.append((len(groups) - 1, len(value)))
        hit = next(
            ((j, end) for j, end in reversed(ends) if phone_ok(value[start:end], lenient)), None
        )
        if hit is None:
            i += 1
            continue
        found.append((start, hit[1]))
        i = hit[0] + 1
    return found


_SEPARATOR_KIND = {" ": " ", "\t": " ", "\r": " ", "\n": " ", "-": "-", ".": ".", "+": "+"}
_IBAN_SEPARATORS = frozenset(_SEPARATOR_KIND)


def iban_refine(value: str, *, deadline: float | None = None) -> list[tuple[int, int]]:
    """The country's IBAN length of alphanumerics, grouped by one kind of separator (white
    space, where a line may wrap, or dashes, or dots), ending at a group boundary (it stops
    at that length, so the deadline needs no check)."""
    length = v.IBAN_LENGTHS.get(value[:2].upper())
    if length is None:
        return []
    seen = 0
    for i, ch in enumerate(value):
        if ch not in _IBAN_SEPARATORS:
            seen += 1
            if seen == length:
                end = i + 1
                kinds = {_SEPARATOR_KIND[ch] for ch in value[:end] if ch in _SEPARATOR_KIND}
                one_kind = len(kinds) <= 1
                if one_kind and (end == len(value) or value[end] in _IBAN_SEPARATORS):
                    return [(0, end)]
                return []
    return []


# ---------------------------------------------------------------------------- dates of birth

_NUMBERS = re.compile(r"\d+")


def is_birth_date(value: str) -> bool:
    """Whether the matched date (numeric or with a month name) is a real calendar date."""
    nums = [int(n) for n in _NUMBERS.findall(value)]
    lowered = value.lower()
    month_name = next((m for m in v.MONTHS if m in lowered and not m.isdigit()), None)
    if month_name is not None and len(nums) >= 2:
        month = max((v.MONTHS[m] for m in v.MONTHS if m in lowered), default=0)
        return v.is_date(nums[-1], month, nums[0])
    if len(nums) != 3:
        return False
    a, b, c = nums
    if a >= 1000:
        return v.is_date(a, b, c)
    year = v.full_year(c)
    return v.is_date(year, b, a) or v.is_date(year, a, b)


# ---------------------------------------------------------------------------- vetoes


def after_word(*words: str) -> Callable[[str], bool]:
    """A veto: one of ``words`` (a whole word) ends right before the value, give or take ':='."""

    def veto(before: str) -> bool:
        before = before.lower().rstrip(" \t:=#")
        for w in words:
            if before.endswith(w):
                rest = before[: -len(w)]
                if not rest or not rest[-1].isalnum():
                    return True
        return False

    return veto


def after_digit_group(before: str) -> bool:
    """A veto: the value continues a run of digit groups (an account number, not a phone)."""
    return len(before) >= 2 and before[-1] in " -." and before[-2].isdigit()


def ipv6_ok(value: str) -> bool:
    """An IPv6 address with at least two non-empty groups (so '::' in code does not count)."""
    groups = [g for g in value.split("%", 1)[0].split(":") if g]
    return len(groups) >= 2 and v.is_ip(value)
