"""P9: properties of redaction over generated requests, with a fake scanner (emails, cards).

Canaries are unique generated values planted anywhere in a request: in strings, keys, JSON held
inside strings (also with '@' escaped), card numbers sent as JSON numbers, query strings and
headers. Whatever the action, if it is not keep, no canary may survive.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from router.redaction.actions import Hasher, apply
from router.redaction.rehydrate import rehydrate_json
from router.redaction.types import Action, DetectionError, Finding
from router.redaction.vault import TokenVault
from router.redaction.walker import RedactionPlan, redact_headers, redact_json, redact_query

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD_RE = re.compile(r"\b4\d{3}(?:[ -]?\d{4}){3}\b")
SECRET = b"site-secret-for-tests-0123456789"
REDACTING = [a for a in Action if a is not Action.KEEP]

PROPS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class FakeScanner:
    """Emails and 16-digit cards starting with 4; zero-width spaces are normalised away."""

    def scan(self, text: str) -> tuple[str, list[Finding]]:
        text = text.replace("\u200b", "")
        found = [Finding("EMAIL", m.start(), m.end()) for m in EMAIL_RE.finditer(text)]
        found += [Finding("CARD", m.start(), m.end()) for m in CARD_RE.finditer(text)]
        return text, found


def redact(doc: Any, action: Action, vault: TokenVault | None = None) -> Any:
    plan = RedactionPlan(default=action)
    return redact_json(
        doc, plan, FakeScanner(), vault if vault is not None else TokenVault(), Hasher(SECRET)
    )[0]


# -- strategies -------------------------------------------------------------------------------

LOWER, DIGITS = "abcdefghijklmnopqrstuvwxyz", "0123456789"
canary_emails = st.lists(
    st.builds(
        "{}.{}@canary.test".format,
        st.text(LOWER, min_size=3, max_size=8),
        st.text(LOWER + DIGITS, min_size=6, max_size=10),
    ),
    min_size=1,
    max_size=4,
    unique=True,
)
canary_cards = st.lists(
    st.text(DIGITS, min_size=15, max_size=15).map("4".__add__), max_size=3, unique=True
)
noise = st.text(max_size=12)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | noise
)


@st.composite
def planted(draw: st.DrawFn) -> tuple[Any, list[str]]:
    """A JSON document with canaries planted anywhere, and the canaries."""
    canaries = draw(canary_emails) + draw(canary_cards)
    with_canary = st.builds(lambda a, c, b: f"{a} {c} {b}", noise, st.sampled_from(canaries), noise)
    strings = noise | with_canary
    scalars = json_scalars | strings
    cards = [c for c in canaries if c.isdigit()]
    if cards:
        scalars |= st.sampled_from([int(c) for c in cards])

    def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        lists = st.lists(inner, max_size=4)
        objects = st.dictionaries(strings, inner, max_size=4)
        # JSON inside a string, as tool-call arguments are; sometimes with '@' escaped.
        embedded = st.builds(_embed, objects | lists, st.booleans())
        return lists | objects | embedded

    doc = draw(st.recursive(scalars, containers, max_leaves=20))
    return doc, canaries


def _embed(doc: Any, escape_at: bool) -> str:
    text = orjson.dumps(doc).decode()
    return text.replace("@", "\\u0040") if escape_at else text


def all_text(doc: Any) -> Iterator[str]:
    """Every string a receiver could read: values, keys, and JSON held inside strings."""
    if isinstance(doc, str):
        yield doc
        if doc.lstrip()[:1] in ("{", "["):
            with contextlib.suppress(orjson.JSONDecodeError):
                yield from all_text(orjson.loads(doc))
    elif isinstance(doc, dict):
        for key, value in doc.items():
            yield key
            yield from all_text(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from all_text(item)
    elif isinstance(doc, int) and not isinstance(doc, bool):
        yield str(doc)


def assert_no_canary(out: Any, canaries: list[str]) -> None:
    wire = orjson.dumps(out).decode("utf-8")
    texts = [wire, *all_text(out)]
    for canary in canaries:
        assert not any(canary in t for t in texts)


# -- properties -------------------------------------------------------------------------------


class TestCanaries:
    @PROPS
    @given(planted(), st.sampled_from(REDACTING))
    def test_never_survive(self, request: tuple[Any, list[str]], action: Action) -> None:
        """No canary survives anywhere in the output, whatever the redacting action."""
        doc, canaries = request
        try:
            out = redact(doc, action)
        except DetectionError as exc:
            refused = str(exc)
        else:
            assert_no_canary(out, canaries)
            return
        # Keys masked or dropped to the same text: refusing to forward is the safe outcome.
        assert "collide" in refused
        assert action in (Action.MASK, Action.DROP)
        event("keys collided")

    @PROPS
    @given(planted())
    def test_keep_keeps_everything(self, request: tuple[Any, list[str]]) -> None:
        """With every entity kept the document comes back equal."""
        doc, _ = request
        assert redact(doc, Action.KEEP) == doc

    @PROPS
    @given(
        st.lists(st.tuples(noise, noise), max_size=4),
        canary_emails,
        st.sampled_from(REDACTING),
    )
    def test_query_strings(
        self, pairs: list[tuple[str, str]], canaries: list[str], action: Action
    ) -> None:
        """Canaries in query names or values never survive a redacted query."""
        planted_pairs = [*pairs, ("to", canaries[0]), (canaries[-1], "x")]
        query = urlencode(planted_pairs)
        plan = RedactionPlan(default=action)
        out, _ = redact_query(query, plan, FakeScanner(), TokenVault(), Hasher(SECRET))
        decoded = " ".join(f"{k} {v}" for k, v in parse_qsl(out, keep_blank_values=True))
        assert not any(c in decoded or c in out for c in canaries)

    @PROPS
    @given(canary_emails, noise, st.sampled_from(REDACTING))
    def test_headers(self, canaries: list[str], text: str, action: Action) -> None:
        """Canaries in scanned headers never survive."""
        headers = [("X-User", f"{text} {c}") for c in canaries]
        plan = RedactionPlan(default=action, headers=("x-user",))
        out, _ = redact_headers(headers, plan, FakeScanner(), TokenVault(), Hasher(SECRET))
        assert not any(c in value for c in canaries for _, value in out)


class TestIdempotence:
    @PROPS
    @given(planted(), st.sampled_from(list(Action)))
    def test_redact_twice_is_redact_once(
        self, request: tuple[Any, list[str]], action: Action
    ) -> None:
        """redact(redact(x)) == redact(x), with a fresh vault or with the same one."""
        doc, _ = request
        vault = TokenVault()
        try:
            once = redact(doc, action, vault)
        except DetectionError:
            return  # colliding keys, covered above
        assert redact(once, action) == once
        assert redact(once, action, vault) == once

    @PROPS
    @given(
        st.lists(
            st.one_of(
                st.text(max_size=8),
                st.emails(),
                st.text(DIGITS, min_size=15, max_size=15).map("4".__add__),
            )
        ),
        st.sampled_from(list(Action)),
    )
    def test_text_with_arbitrary_emails(self, parts: list[str], action: Action) -> None:
        """Hypothesis's odd but valid emails next to random text: still idempotent."""
        doc = {"t": "".join(parts)}
        once = redact(doc, action)
        assert redact(once, action) == once


class TestValidity:
    @PROPS
    @given(planted(), st.sampled_from(list(Action)))
    def test_output_is_valid_json_and_utf8(
        self, request: tuple[Any, list[str]], action: Action
    ) -> None:
        """The output serialises to JSON that reads back equal, as valid UTF-8."""
        doc, _ = request
        try:
            out = redact(doc, action)
        except DetectionError:
            return
        wire = orjson.dumps(out)
        wire.decode("utf-8")
        assert orjson.loads(wire) == out

    @PROPS
    @given(st.text(max_size=40), st.data(), st.sampled_from(list(Action)))
    def test_apply_on_any_spans(self, text: str, data: st.DataObject, action: Action) -> None:
        """Any valid spans over any text give valid UTF-8; keep and drop behave as documented."""
        cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6, unique=True)))
        spans = [(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if a < b]
        findings = [Finding("X", a, b) for a, b in spans]
        out, counts = apply(text, findings, {}, TokenVault(), Hasher(SECRET), default=action)
        out.encode("utf-8")
        if action is Action.KEEP:
            assert out is text
        if action is Action.DROP:
            expected, last = [], 0
            for start, end in spans:
                expected.append(text[last:start])
                last = end
            assert out == "".join([*expected, text[last:]])
        assert sum(counts.values()) == (0 if action is Action.KEEP else len(spans))


class TestReversible:
    @PROPS
    @given(
        st.recursive(
            st.text(st.characters(exclude_characters="\u200b"), max_size=12)
            | st.builds(lambda a, e, b: f"{a} {e} {b}", noise, st.emails(), noise).filter(
                lambda s: "\u200b" not in s
            ),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.text(max_size=6).filter(lambda s: "\u200b" not in s), inner, max_size=3
                )
            ),
            max_leaves=12,
        )
    )
    def test_tokenize_then_rehydrate_restores(self, doc: Any) -> None:
        """Tokenized strings restore exactly with the request's vault."""
        vault = TokenVault()
        try:
            out = redact(doc, Action.TOKENIZE, vault)
        except DetectionError:
            return
        assert rehydrate_json(out, vault) == doc


@pytest.mark.parametrize("action", REDACTING)
def test_escaped_at_in_embedded_json(action: Action) -> None:
    """A canary hidden behind a \\u0040 escape inside JSON-in-a-string is still found."""
    doc = {"arguments": '{"to": "hidden.canary1\\u0040canary.test"}'}
    assert_no_canary(redact(doc, action), ["hidden.canary1@canary.test"])
