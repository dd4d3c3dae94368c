"""An OpenAI request whose JSON number a tier's redaction would turn into text is refused
before it leaves the site, as a KServe v2 numeric tensor is (router/v2/numeric_redaction.py).

Redaction puts text where a value was (a ``<CARD_1>`` token, a mask, a pseudonym, or ``""``
for drop). Where the value was a JSON number (a chat request's `seed`: a random 63-bit seed
has the digits of a 19-digit card one time in thirty), that text changes the field's type,
and the upstream answers 400 (OpenAI: "Invalid type for 'seed'") to a request the client
never sent. So such a view is never sent: the client gets a 422 naming the field (as the
view writes it, tokens for values) and the entity, never the value.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from router.errors import NumericValueRedaction
from router.redaction.walker import RedactionPlan, Scanner
from router.v2.numeric_redaction import entity_of, is_number


def refuse_json_numbers_made_text(
    scanned: Any, redacted: Any, *, tier: str, plan: RedactionPlan, scanner: Scanner | None
) -> None:
    """Raises NumericValueRedaction when a number in `scanned` (the request as detection
    read it) is text in `redacted` (the tier's view of it)."""
    for path, value in _numbers_made_text(scanned, redacted, ()):
        entity = entity_of(value, plan, scanner)
        where = ".".join(path) or "the body"
        error = NumericValueRedaction(
            f"'{where}' is a number holding {entity}, which the {tier} tier may not receive as"
            " it is, and a redaction token in its place would not be a number: send another"
            " value, or the value as a string"
        )
        error.param = where if path else None  # OpenAI's error object names the field
        raise error


def _numbers_made_text(
    before: Any, after: Any, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], int | float]]:
    """(path in `after`, original number) of each number redaction made text. Only where the
    two differ is descended into (a C-speed comparison skips the rest: an embeddings request's
    token arrays are never walked in Python)."""
    if isinstance(after, str):
        if is_number(before):
            yield path, before
        return
    for key, old, new in _children(before, after):
        if old is not new and old != new:
            yield from _numbers_made_text(old, new, (*path, key))


def _children(before: Any, after: Any) -> Iterator[tuple[str, Any, Any]]:
    """Pairs of children in the same place: a dict's in order while their count is the same
    (a key redaction rewrote still pairs with its original), else by key (a drop rule
    removed some); a list's by position."""
    if isinstance(before, dict) and isinstance(after, dict):
        if len(before) == len(after):
            for (_, old), (key, new) in zip(before.items(), after.items(), strict=True):
                yield str(key), old, new
        else:
            for key, new in after.items():
                if key in before:
                    yield str(key), before[key], new
    elif isinstance(before, list) and isinstance(after, list):
        for index, (old, new) in enumerate(zip(before, after, strict=False)):
            yield str(index), old, new
