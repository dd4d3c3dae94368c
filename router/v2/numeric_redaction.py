"""A KServe v2 request whose numeric tensor a tier's redaction would fill with text is refused
before it leaves the site.

Redaction replaces a value with text (a ``<CARD_1>`` token, a mask, a ``<CARD#...>``
pseudonym, or ``""`` for drop): in a BYTES tensor that is as valid as the value was, in an
INT64 or FP64 tensor it is not, and a strict v2 server (Triton, KServe) answers 400 to it, a
lax one may coerce it. No action yields a number, so such a view is never sent: the client gets
a 422 naming the input, its datatype, the entity and the tier (never the value), and what to do.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from router.errors import NumericTensorRedaction
from router.redaction.actions import action_for
from router.redaction.types import Action, DetectionError
from router.redaction.walker import RedactionPlan, Scanner

NON_NUMERIC = frozenset({"BYTES", "BOOL"})


def refuse_numbers_made_text(
    scanned: Mapping[str, Any] | None,
    redacted: Mapping[str, Any] | None,
    *,
    tier: str,
    model: str,
    plan: RedactionPlan,
    scanner: Scanner | None,
) -> None:
    """Raises NumericTensorRedaction when a number of a numeric input in `scanned` (the
    request as detection read it, binary tensors inlined) is text in `redacted` (the tier's
    view of it)."""
    for name, datatype, value in _numbers_made_text(scanned, redacted):
        entity = entity_of(value, plan, scanner)
        raise NumericTensorRedaction(
            f"input '{name}' ({datatype}) holds {entity}, which the {tier} tier may not receive"
            f" as it is, and numbers in {datatype} tensors cannot carry a redaction token in"
            f" their place: send the value in a BYTES tensor, or serve model '{model}' on this"
            " site"
        )


def _numbers_made_text(
    scanned: Mapping[str, Any] | None, redacted: Mapping[str, Any] | None
) -> Iterator[tuple[str, str, int | float]]:
    """(input name, datatype, original number) of each numeric input whose first number
    redaction turned into text."""
    before = scanned.get("inputs") if scanned is not None else None
    after = redacted.get("inputs") if redacted is not None else None
    if not isinstance(before, list) or not isinstance(after, list):
        return
    originals = _by_name(before)
    for position, tensor in enumerate(after):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("data"), list):
            continue
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str) or datatype in NON_NUMERIC:
            continue
        original = _original(before, position, tensor, originals)
        if original is None or original.get("data") == tensor["data"]:
            continue  # left as it was (the common case: one C-speed comparison)
        for old, new in zip(_flat(original["data"]), _flat(tensor["data"]), strict=False):
            if isinstance(new, str) and is_number(old):
                yield str(tensor.get("name")), datatype, old
                break


def _by_name(inputs: list[Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in inputs if isinstance(t, dict) and isinstance(t.get("name"), str)}


def _original(
    before: list[Any], position: int, tensor: dict[str, Any], by_name: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """The scanned input a view's input came from: the same position when names agree (a drop
    rule may have removed an input before it), else the one of its name, else, its name having
    been redacted (an e-mail as a name), the one at its place of its datatype and shape."""
    candidate = before[position] if position < len(before) else None
    if isinstance(candidate, dict) and candidate.get("name") == tensor.get("name"):
        return candidate if isinstance(candidate.get("data"), list) else None
    found = by_name.get(tensor.get("name"))  # type: ignore[arg-type]
    if found is None and isinstance(candidate, dict) and _alike(candidate, tensor):
        found = candidate
    return found if found is not None and isinstance(found.get("data"), list) else None


def _alike(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("datatype") == b.get("datatype") and a.get("shape") == b.get("shape")


def _flat(data: list[Any]) -> Iterator[Any]:
    """A tensor's elements in order, whether its `data` is flat or nested by shape."""
    for item in data:
        if isinstance(item, list):
            yield from _flat(item)
        else:
            yield item


def is_number(value: Any) -> bool:
    """A JSON number: an int or a float, not a bool (which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def entity_of(value: int | float, plan: RedactionPlan, scanner: Scanner | None) -> str:
    """What the value was redacted as ('a CARD value'), found by scanning its digits again as
    the walk did; 'a value' when that cannot tell. Never the value itself."""
    if scanner is None:
        return "a value"
    digits = str(value) if isinstance(value, int) else str(int(value))
    try:
        _, findings = scanner.scan(digits)
    except DetectionError:
        return "a value"
    entities = sorted(
        {
            str(f.entity)
            for f in findings
            if action_for(f.entity, plan.actions, plan.default) != Action.KEEP
        }
    )
    return f"a {' and '.join(entities)} value" if entities else "a value"
