"""Values detection found somewhere in one request, found again wherever else they stand.

Some detectors need context to be sure (a date of birth next to "born", an SSN next to "ssn", a
national id next to its name): the same value repeated elsewhere in the request, in a later chat
turn say, has no context and would go on as it is. Once a value is found anywhere, every literal
copy of it in the request is that entity too. Held per request (inside its scanner), never kept.
"""

from __future__ import annotations

from bisect import bisect_left

import re2

from router.redaction.types import Finding

# Shorter values are not looked for elsewhere: they would match too much unrelated text, and no
# value that needs context to be found is this short.
MIN_KNOWN_CHARS = 6
# Bounds on the matcher: a body holding thousands of values (a customer list) must not make
# one request compile a huge pattern. Past them, values are not looked for again; copies of the
# ones found without context are found by the detectors anyway.
MAX_KNOWN_VALUES = 256
MAX_KNOWN_CHARS = 256


class KnownValues:
    """Normalised values, each with its entity; a linear-time matcher over them all."""

    __slots__ = ("_entities", "_matcher")

    def __init__(self) -> None:
        self._entities: dict[str, str] = {}
        self._matcher: re2._Regexp | None = None

    def learn(self, value: str, entity: str) -> None:
        if not MIN_KNOWN_CHARS <= len(value) <= MAX_KNOWN_CHARS:
            return
        if len(self._entities) < MAX_KNOWN_VALUES and value not in self._entities:
            self._entities[value] = entity
            self._matcher = None

    def find(self, text: str, besides: list[Finding]) -> list[Finding]:
        """Copies of known values in a normalised text, except where `besides` found one."""
        if not self._entities:
            return []
        if self._matcher is None:
            # Longest first: where two values overlap, the longer one is the copy.
            values = sorted(self._entities, key=len, reverse=True)
            self._matcher = re2.compile("|".join(re2.escape(v) for v in values))
        starts = [f.start for f in besides]  # sorted, not overlapping: the detectors' output
        copies = []
        for m in self._matcher.finditer(text):
            # The last finding starting before this copy ends is the only one it can overlap.
            i = bisect_left(starts, m.end()) - 1
            if i >= 0 and besides[i].end > m.start():
                continue
            copies.append(Finding(self._entities[m.group()], m.start(), m.end()))
        return copies

    def __len__(self) -> int:
        return len(self._entities)

    def __repr__(self) -> str:
        return f"KnownValues({len(self._entities)} values)"  # never the values themselves
