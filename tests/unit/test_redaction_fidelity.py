"""Redaction replaces the sensitive values and nothing else (issue 4, P3 evasions): the
normaliser decides what is found, but the text that goes on is the caller's own, byte for byte
around the findings, and a restored token gives back the value as the caller wrote it."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from router.privacy import MemoScanner
from router.redaction.actions import Hasher
from router.redaction.detectors import Detectors
from router.redaction.rehydrate import rehydrate_json
from router.redaction.types import Action
from router.redaction.vault import TokenVault
from router.redaction.walker import RedactionPlan, redact_json

DETECTORS = Detectors.default()
HASHER = Hasher(b"k" * 32)


def _redact(doc: Any, action: Action, vault: TokenVault) -> tuple[Any, Counter[str]]:
    scanner = MemoScanner(DETECTORS, 1_000_000, 5.0)
    return redact_json(doc, RedactionPlan(default=action), scanner, vault, HASHER)


@pytest.mark.parametrize(
    "around",
    [
        "Fix `a &amp;&amp; b` in {}",  # HTML entities in a code snippet
        "GET /a%20b?q=1 from {}",  # percent-encoding in a URL
        "\uff08\u682a\uff09\uff7b\uff9d\uff8c\uff9f\uff99: {}",  # wide forms NFKC folds
        "x\u200by {} \ufb01le",  # a zero-width space and a ligature
    ],
)
def test_text_around_a_finding_goes_on_as_written(around: str) -> None:
    """Only the e-mail is replaced: entities, escapes and wide forms next to it stay as sent."""
    doc = {"content": around.format("ann.lee@example.com")}
    out, counts = _redact(doc, Action.TOKENIZE, TokenVault())
    assert out == {"content": around.format("<EMAIL_1>")}
    assert counts == Counter({"EMAIL": 1})


@pytest.mark.parametrize(
    "written",
    [
        "ann.lee%40example.com",
        "ann.lee&#64;example.com",
        "ann\u200b.lee@example.com",
        "ann.lee\uff20example.com",
    ],
)
def test_disguised_values_are_found_and_restored_as_written(written: str) -> None:
    """An encoded or disguised e-mail is still caught, and the answer gets back what was sent."""
    vault = TokenVault()
    out, counts = _redact({"content": f"mail {written} now"}, Action.TOKENIZE, vault)
    assert counts == Counter({"EMAIL": 1})
    assert out == {"content": "mail <EMAIL_1> now"}
    assert rehydrate_json(out, vault) == {"content": f"mail {written} now"}


def test_pseudonyms_do_not_depend_on_the_encoding() -> None:
    """A keyed pseudonym names the value, not how it was written: encodings share one."""
    plain, _ = _redact({"c": "ann.lee@example.com"}, Action.HASH, TokenVault())
    encoded, _ = _redact({"c": "ann.lee%40example.com"}, Action.HASH, TokenVault())
    assert plain == encoded
    assert plain["c"].startswith("<EMAIL#")
