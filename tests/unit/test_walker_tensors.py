"""Tensor-shaped arrays pass the walk in one piece, without weakening what it checks."""

from __future__ import annotations

from collections import Counter

import pytest

from router.privacy import MemoScanner
from router.redaction import walker
from router.redaction.actions import Hasher
from router.redaction.detectors import Detectors
from router.redaction.types import Action, DetectionError
from router.redaction.vault import TokenVault
from router.redaction.walker import FieldRule, RedactionPlan, redact_json

DETECTORS = Detectors.default()


def _walk(doc: object, plan: RedactionPlan) -> tuple[object, Counter[str]]:
    scanner = MemoScanner(DETECTORS, 1_000_000, 5.0)
    return redact_json(doc, plan, scanner, TokenVault(), Hasher(b"k" * 32))


def test_tensor_data_is_copied_not_shared() -> None:
    """A float tensor comes back equal, as a new list (the input is never aliased)."""
    data = [0.5, 1, -3, 2.25]
    out, counts = _walk({"data": data}, RedactionPlan())
    assert out == {"data": data}
    assert out["data"] is not data  # type: ignore[index]
    assert not counts


def test_a_card_number_among_floats_is_still_found() -> None:
    """One large integer in a number array sends the array through the scanner."""
    out, counts = _walk({"data": [0.5, 4111111111111111]}, RedactionPlan(default=Action.MASK))
    assert counts["CARD"] == 1
    assert out["data"][1] != 4111111111111111  # type: ignore[index]


def test_a_drop_path_into_an_array_still_drops() -> None:
    """A plan that drops array elements walks the array element by element."""
    plan = RedactionPlan(drop_fields=("data.1",))
    out, _ = _walk({"data": [0.5, 1.5, 2.5]}, plan)
    assert out == {"data": [0.5, 2.5]}


def test_numbers_past_the_depth_limit_still_fail() -> None:
    """An array whose numbers sit deeper than max_depth fails closed as before."""
    with pytest.raises(DetectionError):
        _walk({"a": [[1.0]]}, RedactionPlan(max_depth=2))


def test_only_the_long_integers_of_a_number_array_are_scanned_with_their_own_rule() -> None:
    """Small numbers are copied as they are; a card number is redacted under the rule for
    its own element path (a drop_leaf rule there empties it), its count kept."""
    data = [3, 0.5, 4111111111111111, -7, 4111111111111111]
    plan = RedactionPlan(
        default=Action.MASK,
        fields=(FieldRule("data.2", default=Action.DROP, drop_leaf=True),),
    )
    out, counts = _walk({"data": data}, plan)
    assert out == {"data": [3, 0.5, "", -7, "************1111"]}
    assert counts["CARD"] == 2


def test_drop_fields_elsewhere_keep_tensor_data_in_one_piece(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default bundle drops `user` and `metadata.customer_email`: paths no tensor
    element can be at, so a number array is not walked element by element for them (a
    4 MB INT64 tensor holding one card took 0.8 s to redact for central, 34 ms to survey)."""
    checked: list[tuple[str, ...]] = []
    original = walker._Walk._dropped

    def counting(self: walker._Walk, path: tuple[str, ...]) -> bool:
        checked.append(path)
        return original(self, path)

    monkeypatch.setattr(walker._Walk, "_dropped", counting)
    data = [*range(1_000), 4111111111111111]
    plan = RedactionPlan(drop_fields=("user", "metadata.customer_email"))
    out, counts = _walk({"inputs": [{"data": data}], "user": "u"}, plan)
    assert out == {"inputs": [{"data": [*range(1_000), "<CARD_1>"]}]}
    assert counts["CARD"] == 1
    assert len(checked) < 10  # the members' paths, not each element's


@pytest.mark.parametrize("pattern", ["inputs.0.data.3", "inputs.*.data.*", "**.3"])
def test_a_drop_pattern_that_may_reach_an_element_still_drops_it(pattern: str) -> None:
    """A drop pattern that can match an element of the array (exact, wildcard or **)
    still removes it."""
    data = [10, 11, 12, 13]
    out, _ = _walk({"inputs": [{"data": data}]}, RedactionPlan(drop_fields=(pattern,)))
    kept = {"inputs.0.data.3": [10, 11, 12], "inputs.*.data.*": [], "**.3": [10, 11, 12]}
    assert out == {"inputs": [{"data": kept[pattern]}]}
