"""The pieces a detector is made of: an RE2 pattern searched over UTF-8 bytes, and a detector
(one pattern for one entity type, plus what a match must pass to become a finding)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import re2

OPTIONS = re2.Options()
OPTIONS.log_errors = False  # a bad custom pattern is reported by the exception, not on stderr
UNANCHORED = re2._re2.RE2.Anchor.UNANCHORED


class Pattern:
    """An RE2 expression searched over UTF-8 bytes; reports the span of one capture group."""

    __slots__ = ("_raw", "source", "value_group")

    def __init__(self, source: str, *, value_group: int | str = 1) -> None:
        compiled: Any = re2.compile(source, OPTIONS)  # raises re2.error on bad syntax
        self.source = source
        self._raw: Any = compiled._regexp
        if isinstance(value_group, str):
            value_group = compiled.groupindex.get(value_group, 0)
        self.value_group = value_group if value_group <= compiled.groups else 0

    def search(self, data: bytes, pos: int) -> tuple[int, int, int, int] | None:
        """(match start, match end, value start, value end) of the first match at or after pos."""
        spans = self._raw.Match(UNANCHORED, data, pos, len(data))
        start, end = spans[0]
        if start < 0:
            return None
        vs, ve = spans[self.value_group]
        if vs < 0:
            vs, ve = start, end
        return start, end, vs, ve


class Refiner(Protocol):
    """Finds the spans worth validating in a match; DetectionError once ``deadline`` (a
    ``time.monotonic()`` instant) has passed, as one match may be long."""

    def __call__(
        self, value: str, /, *, deadline: float | None = ...
    ) -> Sequence[tuple[int, int]]: ...


@dataclass(frozen=True, slots=True)
class Detector:
    """One pattern for one entity type, and what a match must pass to become a finding.

    ``refine`` splits a match into the sub-spans worth validating (a run of digit groups may
    hold a card and a date); ``context`` words (lower case), if given, must occur within
    ``window`` characters before or ``window // 2`` after a finding; ``veto``, given the 24
    characters before a finding, can reject it. Entity names starting with ``_`` mark spans
    that suppress overlapping candidates (UUIDs, timestamps) and are never reported. ``rank``
    breaks ties between equally long overlapping candidates: lower wins. ``resume_inside``
    resumes the search right after the last finding of a match (or one character into a
    rejected one) instead of after the whole match: for patterns whose greedy, bounded match can
    swallow the start of the next value."""

    entity: str
    pattern: Pattern
    validator: Callable[[str], bool] | None = None
    context: tuple[str, ...] = ()
    veto: Callable[[str], bool] | None = None
    window: int = 48
    refine: Refiner | None = None
    rank: int = 50
    resume_inside: bool = False
    name: str = ""
