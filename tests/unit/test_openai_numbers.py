"""refuse_json_numbers_made_text: which tier views of an OpenAI request are refused (a JSON
number redaction made text), and what the refusal names."""

from __future__ import annotations

from typing import Any

import pytest

from router.errors import NumericValueRedaction
from router.openai_numbers import refuse_json_numbers_made_text
from router.policy.bundle import load_bundle
from router.privacy import MemoScanner, Privacy
from router.resources import default_policy_bundle

CARD = 4111111111111111


@pytest.fixture(scope="module")
def privacy() -> Privacy:
    return Privacy.build(load_bundle(default_policy_bundle()), None, b"k" * 32)


def check(privacy: Privacy, scanned: Any, redacted: Any) -> None:
    scanner = MemoScanner(privacy.detectors, 1 << 20, 5.0)
    plan = privacy.plans["central"]
    refuse_json_numbers_made_text(scanned, redacted, tier="central", plan=plan, scanner=scanner)


def test_nested_number_made_text_is_named_by_its_path(privacy: Privacy) -> None:
    """A card in a tool schema's default is refused, the path named, never the value."""
    scanned = {"tools": [{"parameters": {"default": CARD, "n": 1}}], "seed": 7}
    redacted = {"tools": [{"parameters": {"default": "<CARD_1>", "n": 1}}], "seed": 7}
    with pytest.raises(NumericValueRedaction) as info:
        check(privacy, scanned, redacted)
    assert info.value.message.startswith(
        "'tools.0.parameters.default' is a number holding a CARD value, which the central tier"
    )
    assert str(CARD) not in info.value.message


def test_strings_redacted_pass(privacy: Privacy) -> None:
    """Text made text (a message, a JSON text inside a string such as tool-call arguments,
    whose numbers are its own business) is no refusal."""
    scanned = {"messages": [{"content": "card 4111 1111 1111 1111"}], "a": f'{{"c": {CARD}}}'}
    redacted = {"messages": [{"content": "card <CARD_1>"}], "a": '{"c":"<CARD_1>"}'}
    check(privacy, scanned, redacted)


def test_a_key_rewritten_still_pairs_with_its_number(privacy: Privacy) -> None:
    """A number under a key redaction rewrote is paired by position, and the path named is
    the view's (the token, not the value)."""
    scanned = {"a@example.com": CARD}
    redacted = {"<EMAIL_1>": "<CARD_1>"}
    with pytest.raises(NumericValueRedaction) as info:
        check(privacy, scanned, redacted)
    assert info.value.message.startswith("'<EMAIL_1>' is a number")


def test_a_dropped_field_is_no_refusal(privacy: Privacy) -> None:
    """A field a drop rule removed is not there to compare; the numbers left as they were
    pass."""
    check(
        privacy, {"user": "x", "seed": 12345678, "ids": [1, 2]}, {"seed": 12345678, "ids": [1, 2]}
    )
