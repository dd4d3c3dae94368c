"""The whole-body pre-filter: when detection would find something in any string of a plain
ASCII JSON body, a pattern also occurs in the body's text, so the survey's walk is never
skipped for a body holding a finding."""

from __future__ import annotations

import orjson
from faker import Faker
from hypothesis import given, settings
from hypothesis import strategies as st

from router.redaction.detectors import CustomPattern, Detectors

DETECTORS = Detectors.default()
PIECES = st.sampled_from(
    ["4111 1111 1111 1111", "4111111111111111", "123-45-6789", "ssn", "123456789", "@", ".",
     "a@example.com", "DE89370400440532013000", "+44 20 7946 0958", "phone", "10.0.0.1",
     "fe80::1", "bearer", " ", "-", ":", "token=", "AKIA", "ghp_", "1990-01-31", "x", "7", "Z"]
)  # fmt: skip


def _plain(text: str) -> bool:
    return text.isascii() and not any(c in text for c in '%&\\"') and text.isprintable()


def _json_texts(value: str) -> list[bytes]:
    return [orjson.dumps({"k": value}), orjson.dumps({value: 1}), orjson.dumps([[value], "z"])]


@settings(max_examples=400, deadline=None)
@given(st.lists(PIECES, min_size=1, max_size=8).map("".join))
def test_a_finding_in_a_string_shows_in_the_body(text: str) -> None:
    """Any text the scanner finds something in makes the pre-filter say "may occur"."""
    if not _plain(text) or not DETECTORS.scan(text)[1]:
        return
    for body in _json_texts(text):
        assert DETECTORS.may_occur(body), body


def test_faker_values_show_in_the_body() -> None:
    """Generated e-mails, cards, IBANs, SSNs and phones embedded in JSON are never missed."""
    fake = Faker("en_US")
    fake.seed_instance(7)
    values = [fake.email(), fake.credit_card_number(), fake.iban(), fake.ssn()]
    values += [fake.phone_number() for _ in range(5)]
    for value in values:
        assert DETECTORS.scan(value)[1], value
        for body in _json_texts(value):
            assert DETECTORS.may_occur(body), (value, body)


def test_a_card_number_as_a_json_number_shows() -> None:
    """A card sent as a JSON integer still makes the body a candidate."""
    assert DETECTORS.may_occur(b'{"n":4111111111111111}')


def test_clean_body_has_nothing() -> None:
    """An ordinary chat body gives no candidate at all."""
    body = b'{"model":"m","messages":[{"role":"user","content":"Hello! What is a router?"}]}'
    assert not DETECTORS.may_occur(body)


def test_custom_patterns_are_not_trusted_whole() -> None:
    """A bundle's own pattern may anchor on a string's edges: the shortcut is off then."""
    assert DETECTORS.whole_text_sound
    custom = Detectors.default([CustomPattern("ticket", r"^T-\d{6}$")])
    assert not custom.whole_text_sound
