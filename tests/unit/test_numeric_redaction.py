"""refuse_numbers_made_text: which tier views of a v2 request are refused, and what the refusal
says, with the default bundle's real detectors and plans."""

from __future__ import annotations

from typing import Any

import pytest

from router.errors import NumericTensorRedaction
from router.policy.bundle import load_bundle
from router.privacy import MemoScanner, Privacy
from router.resources import default_policy_bundle
from router.v2.numeric_redaction import refuse_numbers_made_text

CARD = 4111111111111111


@pytest.fixture(scope="module")
def privacy() -> Privacy:
    return Privacy.build(load_bundle(default_policy_bundle()), None, b"k" * 32)


def request(*inputs: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": list(inputs)}


def tensor(name: str, datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [len(data)], "data": data}


def check(privacy: Privacy, scanned: dict[str, Any], redacted: dict[str, Any]) -> None:
    scanner = MemoScanner(privacy.detectors, 1 << 20, 5.0)
    refuse_numbers_made_text(
        scanned,
        redacted,
        tier="central",
        model="m",
        plan=privacy.plans["central"],
        scanner=scanner,
    )


def test_a_number_made_text_in_nested_data_is_refused_naming_the_entity(
    privacy: Privacy,
) -> None:
    """A card in shape-nested INT64 data, tokenized: refused naming input, type and CARD."""
    scanned = request(tensor("ids", "INT64", [[1, CARD], [2, 3]]))
    redacted = request(tensor("ids", "INT64", [[1, "<CARD_1>"], [2, 3]]))
    with pytest.raises(NumericTensorRedaction) as caught:
        check(privacy, scanned, redacted)
    message = caught.value.message
    assert message.startswith("input 'ids' (INT64) holds a CARD value, which the central tier")
    assert str(CARD) not in message
    assert caught.value.status == 422


def test_a_dropped_element_in_fp64_is_refused(privacy: Privacy) -> None:
    """drop leaves "" where an FP64 number was: refused too."""
    scanned = request(tensor("x", "FP64", [0.5, float(CARD)]))
    redacted = request(tensor("x", "FP64", [0.5, ""]))
    with pytest.raises(NumericTensorRedaction, match=r"'x' \(FP64\) holds a CARD value"):
        check(privacy, scanned, redacted)


@pytest.mark.parametrize(
    ("scanned", "redacted"),
    [
        # BYTES: a token is as valid as the text was.
        (
            request(tensor("t", "BYTES", [str(CARD)])),
            request(tensor("t", "BYTES", ["<CARD_1>"])),
        ),
        # Unchanged numbers.
        (request(tensor("ids", "INT64", [CARD])), request(tensor("ids", "INT64", [CARD]))),
        # A string the client itself put in an INT64 tensor is the server's to judge.
        (request(tensor("ids", "INT64", ["7"])), request(tensor("ids", "INT64", ["7"]))),
    ],
    ids=["bytes", "unchanged", "client-string"],
)
def test_views_that_need_no_refusal_pass(
    privacy: Privacy, scanned: dict[str, Any], redacted: dict[str, Any]
) -> None:
    """Text in BYTES, numbers left as they were, or text that was text already: no refusal."""
    check(privacy, scanned, redacted)


def test_an_input_removed_before_it_is_matched_by_name(privacy: Privacy) -> None:
    """A drop rule removed the first input: the second is still compared with its original."""
    scanned = request(tensor("a", "INT64", [1]), tensor("ids", "INT64", [CARD]))
    redacted = request(tensor("ids", "INT64", ["<CARD_1>"]))
    with pytest.raises(NumericTensorRedaction, match="'ids'"):
        check(privacy, scanned, redacted)


def test_an_input_whose_name_was_redacted_too(privacy: Privacy) -> None:
    """An input named by an e-mail (its name redacted in the view) holding a card is still
    compared with the input it came from: refused, naming it as the view does, not as sent."""
    email = "jane.doe@example.com"
    scanned = request(tensor(email, "INT64", [CARD, 5]))
    redacted = request(tensor("<EMAIL_1>", "INT64", ["<CARD_1>", 5]))
    with pytest.raises(NumericTensorRedaction, match=r"'<EMAIL_1>' \(INT64\) holds a CARD") as no:
        check(privacy, scanned, redacted)
    assert email not in no.value.message
