"""Actions, the token vault and the request walker, with a fake scanner (emails and cards).

The real detectors are tested on their own; a regex fake keeps these tests about what is done
with findings, wherever they sit in a request.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections import Counter

import orjson
import pytest

from router.redaction.actions import Hasher, apply, mask
from router.redaction.detectors import Detectors
from router.redaction.types import Action, DetectionError, Finding
from router.redaction.vault import TOKEN_RE, TokenVault
from router.redaction.walker import (
    FieldRule,
    RedactionPlan,
    redact_headers,
    redact_json,
    redact_query,
)

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD_RE = re.compile(r"\b4\d{3}(?:[ -]?\d{4}){3}\b")
SECRET = b"site-secret-for-tests-0123456789"


class FakeScanner:
    """Emails and 16-digit cards starting with 4; zero-width spaces are normalised away."""

    def __init__(self) -> None:
        self.calls = 0

    def scan(self, text: str) -> tuple[str, list[Finding]]:
        self.calls += 1
        text = text.replace("\u200b", "")
        found = [Finding("EMAIL", m.start(), m.end()) for m in EMAIL_RE.finditer(text)]
        found += [Finding("CARD", m.start(), m.end()) for m in CARD_RE.finditer(text)]
        return text, found


class BrokenScanner:
    def scan(self, text: str) -> tuple[str, list[Finding]]:
        raise ValueError(f"cannot scan {text!r}")


def scan(text: str) -> tuple[str, list[Finding]]:
    return FakeScanner().scan(text)


def redact(doc: object, plan: RedactionPlan | None = None) -> tuple[object, Counter[str]]:
    return redact_json(doc, plan or RedactionPlan(), FakeScanner(), TokenVault(), Hasher(SECRET))


class TestTokenVault:
    def test_same_value_same_token(self) -> None:
        """A value seen twice in a request gets the token it got the first time."""
        vault = TokenVault()
        first = vault.token_for("EMAIL", "a@b.com")
        assert vault.token_for("EMAIL", "a@b.com") == first == "<EMAIL_1>"

    def test_numbers_count_per_entity(self) -> None:
        """Each entity numbers its own values from 1."""
        vault = TokenVault()
        tokens = [vault.token_for(e, v) for e, v in [("EMAIL", "a"), ("CARD", "b"), ("EMAIL", "c")]]
        assert tokens == ["<EMAIL_1>", "<CARD_1>", "<EMAIL_2>"]
        assert vault.counts == {"EMAIL": 2, "CARD": 1}
        assert len(vault) == 3

    def test_restore_issued_token(self) -> None:
        """An issued token restores to its exact value."""
        vault = TokenVault()
        token = vault.token_for("EMAIL", "Alice@Example.com")
        assert vault.restore(token) == "Alice@Example.com"

    def test_unknown_token_is_not_restored(self) -> None:
        """A well-formed token this vault never issued restores to nothing."""
        vault = TokenVault()
        vault.token_for("EMAIL", "a@b.com")
        assert vault.restore("<EMAIL_2>") is None
        assert vault.restore("<CARD_1>") is None

    def test_other_requests_token_is_unknown(self) -> None:
        """A token issued by another request's vault means nothing in this one."""
        other, mine = TokenVault(), TokenVault()
        token = other.token_for("EMAIL", "theirs@b.com")
        assert mine.restore(token) is None

    def test_custom_entity_label(self) -> None:
        """Custom pattern names become upper-case labels that rehydration recognises."""
        vault = TokenVault()
        token = vault.token_for("employee id", "E-1234")
        assert token == "<EMPLOYEE_ID_1>"
        assert TOKEN_RE.fullmatch(token)
        assert TOKEN_RE.fullmatch(vault.token_for("9lives", "x"))

    def test_is_partial(self) -> None:
        """Proper prefixes of issued tokens are partial; whole tokens and others are not."""
        vault = TokenVault()
        vault.token_for("EMAIL", "a@b.com")
        assert vault.is_partial("<")
        assert vault.is_partial("<EMAIL_")
        assert not vault.is_partial("<EMAIL_1>")
        assert not vault.is_partial("<CARD")
        assert vault.max_token_length == len("<EMAIL_1>")

    def test_repr_shows_no_values(self) -> None:
        """A vault in a log line shows counts, never the values it holds."""
        vault = TokenVault()
        vault.token_for("EMAIL", "secret@b.com")
        assert "secret" not in repr(vault)

    def test_never_pickled(self) -> None:
        """A vault cannot be persisted by accident (spool, cache)."""
        with pytest.raises(TypeError):
            pickle.dumps(TokenVault())


class TestHasher:
    def test_stable_for_one_secret(self) -> None:
        """The same value gets the same pseudonym from any hasher with the site's secret."""
        assert Hasher(SECRET).pseudonym("EMAIL", "a@b.com") == Hasher(SECRET).pseudonym(
            "EMAIL", "a@b.com"
        )

    def test_keyed(self) -> None:
        """Another secret gives another pseudonym."""
        other = Hasher(b"another-site-secret-0123456789ab")
        assert Hasher(SECRET).pseudonym("EMAIL", "a@b.com") != other.pseudonym("EMAIL", "a@b.com")

    def test_entity_is_part_of_the_key(self) -> None:
        """The same characters as two entities give two pseudonyms."""
        hasher = Hasher(SECRET)
        assert hasher.pseudonym("PHONE", "12345678") != hasher.pseudonym("CARD", "12345678")

    def test_format_has_no_digits(self) -> None:
        """Pseudonyms are letters only, so number detectors cannot match inside them."""
        pseudonym = Hasher(SECRET).pseudonym("EMAIL", "a@b.com")
        assert re.fullmatch(r"<EMAIL#[a-p]{12}>", pseudonym)

    def test_short_secret_refused(self) -> None:
        """A guessable secret would make pseudonyms reversible by brute force."""
        with pytest.raises(ValueError, match="16 bytes"):
            Hasher(b"short")

    def test_repr_hides_secret(self) -> None:
        """The secret never reaches a log line."""
        assert "site-secret" not in repr(Hasher(SECRET))


class TestMask:
    def test_keeps_last_four(self) -> None:
        """Long values keep their last four characters."""
        assert mask("4111111111111111") == "************1111"

    def test_short_values_fully_masked(self) -> None:
        """Four characters of a short value would give too much away."""
        assert mask("123-4567") == "********"


class TestApply:
    def run(self, text: str, policy: dict[str, Action], default: Action = Action.TOKENIZE) -> str:
        normalised, findings = scan(text)
        out, _ = apply(normalised, findings, policy, TokenVault(), Hasher(SECRET), default)
        return out

    @pytest.mark.parametrize(
        ("action", "expected"),
        [
            (Action.KEEP, "to a@b.com."),
            (Action.DROP, "to ."),
            (Action.MASK, "to *******."),
            (Action.TOKENIZE, "to <EMAIL_1>."),
        ],
    )
    def test_actions(self, action: Action, expected: str) -> None:
        """Each action replaces the value as documented."""
        assert self.run("to a@b.com.", {"EMAIL": action}) == expected

    def test_hash(self) -> None:
        """Hash replaces the value by its site pseudonym."""
        out = self.run("to a@b.com.", {"EMAIL": Action.HASH})
        assert out == f"to {Hasher(SECRET).pseudonym('EMAIL', 'a@b.com')}."

    def test_default_for_unconfigured_entities(self) -> None:
        """An entity with no configured action gets the default."""
        out = self.run("a@b.com 4111111111111111", {"CARD": Action.MASK}, default=Action.DROP)
        assert out == " ************1111"

    def test_counts_exclude_kept(self) -> None:
        """Counts are of redactions: kept findings are not counted."""
        text, findings = scan("a@b.com c@d.com 4111111111111111")
        policy = {"CARD": Action.KEEP}
        _, counts = apply(text, findings, policy, TokenVault(), Hasher(SECRET))
        assert counts == Counter({"EMAIL": 2})

    def test_all_kept_returns_the_same_text(self) -> None:
        """Text whose findings are all kept comes back as the same object."""
        text, findings = scan("a@b.com")
        out, counts = apply(text, findings, {"EMAIL": Action.KEEP}, TokenVault(), Hasher(SECRET))
        assert out is text
        assert not counts

    def test_overlap_takes_the_strictest(self) -> None:
        """Overlapping findings merge into one span with the strictest action of either."""
        text = "id 4111111111111111@bank.com"
        findings = [Finding("CARD", 3, 19), Finding("EMAIL", 3, len(text))]
        policy = {"CARD": Action.MASK, "EMAIL": Action.TOKENIZE}
        vault = TokenVault()
        out, counts = apply(text, findings, policy, vault, Hasher(SECRET))
        assert out == "id <EMAIL_1>"
        assert vault.restore("<EMAIL_1>") == "4111111111111111@bank.com"
        assert counts == Counter({"EMAIL": 1})

    def test_adjacent_findings_both_replaced(self) -> None:
        """Findings that touch but do not overlap are replaced one by one."""
        findings = [Finding("A", 0, 2), Finding("B", 2, 4)]
        out, _ = apply("xxyy", findings, {}, TokenVault(), Hasher(SECRET))
        assert out == "<A_1><B_1>"

    @pytest.mark.parametrize("span", [(-1, 2), (2, 2), (3, 1), (0, 99)])
    def test_invalid_span_fails_closed(self, span: tuple[int, int]) -> None:
        """A detector span outside the text raises rather than redacting the wrong characters."""
        with pytest.raises(DetectionError):
            apply("abcdef", [Finding("X", *span)], {}, TokenVault(), Hasher(SECRET))

    def test_non_bmp_text_stays_valid(self) -> None:
        """Emoji and other astral characters around values survive as valid UTF-8."""
        out = self.run("😀a@b.com😀 ✉ 4111111111111111🎉", {"CARD": Action.MASK})
        assert out == "😀<EMAIL_1>😀 ✉ ************1111🎉"
        out.encode("utf-8")

    @pytest.mark.parametrize("action", [a for a in Action if a is not Action.KEEP])
    def test_replacements_are_not_detected_again(self, action: Action) -> None:
        """Placeholders, pseudonyms and masks contain nothing a detector finds."""
        out = self.run("a@b.com and 4111 1111 1111 1111", {}, default=action)
        assert scan(out)[1] == []


class TestRedactJson:
    def test_every_string_leaf_at_any_depth(self) -> None:
        """Values, keys and list items are scanned however deep they sit."""
        doc = {"a": [{"b": {"c": ["x a@b.com"]}}], "c@d.com": 1, "z": {"y": [[["e@f.com"]]]}}
        out, counts = redact(doc)
        assert out == {
            "a": [{"b": {"c": ["x <EMAIL_1>"]}}],
            "<EMAIL_2>": 1,
            "z": {"y": [[["<EMAIL_3>"]]]},
        }
        assert counts == Counter({"EMAIL": 3})

    def test_input_not_mutated(self) -> None:
        """The caller's document is left as it was and shares no container with the copy."""
        doc = {"messages": [{"role": "user", "content": "a@b.com"}], "meta": {"k": ["v"]}}
        before = copy.deepcopy(doc)
        out, _ = redact(doc)
        assert doc == before
        assert out["meta"] is not doc["meta"]  # type: ignore[index]
        assert out["meta"]["k"] is not doc["meta"]["k"]  # type: ignore[index]

    def test_openai_tool_call_arguments(self) -> None:
        """JSON in a string is parsed (escapes decoded), redacted inside and re-serialised."""
        arguments = '{"to": "bob\\u0040example.com", "cc": ["c@d.com"]}'
        doc = {
            "messages": [{"tool_calls": [{"function": {"name": "send", "arguments": arguments}}]}]
        }
        out, _ = redact(doc)
        new = out["messages"][0]["tool_calls"][0]["function"]["arguments"]  # type: ignore[index]
        assert orjson.loads(new) == {"to": "<EMAIL_1>", "cc": ["<EMAIL_2>"]}

    def test_clean_json_string_left_byte_identical(self) -> None:
        """A JSON string with nothing to redact, and nothing its parse does not hold, is not
        re-serialised."""
        arguments = '{ "city" : "Oslo", "lat": 59.91, "tags": ["a", "b"] }'
        out, _ = redact({"arguments": arguments})
        assert out["arguments"] is arguments  # type: ignore[index]

    @pytest.mark.parametrize(
        ("arguments", "parsed"),
        [
            ('{ "card" : "4111111111111111", "card": "x", "n": 1.5 }', '{"card":"x","n":1.5}'),
            ('[{"n": 41111111111.9}]', '[{"n":41111111111.9}]'),
            ('{"n": 4.1e3}', '{"n":4100.0}'),
        ],
        ids=["duplicate-key", "long-float", "exponent"],
    )
    def test_clean_json_string_goes_on_as_its_parse(self, arguments: str, parsed: str) -> None:
        """A JSON string whose text may hold more than its parse (a duplicate key's first
        value, a float literal's digits its value may not keep) goes on as the parse that
        was scanned, re-encoded; spacing is lost with it."""
        out, counts = redact({"arguments": arguments})
        assert out == {"arguments": parsed}
        assert not counts

    def test_non_json_arguments_scanned_as_text(self) -> None:
        """Half-written JSON is scanned as plain text."""
        out, _ = redact({"arguments": '{"to": "a@b.com", '})
        assert out == {"arguments": '{"to": "<EMAIL_1>", '}

    def test_kserve_bytes_tensor(self) -> None:
        """BYTES tensor elements are scanned; numeric tensors pass untouched."""
        doc = {
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["hi", "a@b.com"]},
                {"name": "x", "datatype": "FP32", "shape": [3], "data": [1.5, 2.0, 3.25]},
            ]
        }
        out, _ = redact(doc)
        assert out["inputs"][0]["data"] == ["hi", "<EMAIL_1>"]  # type: ignore[index]
        assert out["inputs"][1] == doc["inputs"][1]  # type: ignore[index]

    def test_card_as_json_number(self) -> None:
        """A card number sent as a number goes on as the redacted string; small ints stay ints."""
        out, _ = redact(
            {"card": 4111111111111111, "n": 42, "ok": True}, RedactionPlan(default=Action.MASK)
        )
        assert out == {"card": "************1111", "n": 42, "ok": True}

    def test_field_rule_overrides_entity_actions(self) -> None:
        """A path rule's actions apply under its path; elsewhere the plan's do."""
        plan = RedactionPlan(
            actions={"EMAIL": Action.TOKENIZE},
            fields=(FieldRule("messages.*.content", actions={"EMAIL": Action.KEEP}),),
        )
        doc = {"messages": [{"content": "a@b.com", "name": "c@d.com"}], "user": "e@f.com"}
        out, _ = redact(doc, plan)
        assert out == {
            "messages": [{"content": "a@b.com", "name": "<EMAIL_1>"}],
            "user": "<EMAIL_2>",
        }

    def test_field_rule_covers_subtree_and_deepest_wins(self) -> None:
        """A rule covers everything below its path; a deeper rule overrides it."""
        plan = RedactionPlan(
            fields=(
                FieldRule("inputs", default=Action.MASK),
                FieldRule("inputs.*.data.1", default=Action.DROP),
            )
        )
        doc = {"inputs": [{"data": ["alice@example.com", "a@b.com y"], "name": "c@d.com"}]}
        out, _ = redact(doc, plan)
        assert out == {"inputs": [{"data": ["*************.com", " y"], "name": "*******"}]}

    def test_double_star(self) -> None:
        """`**` matches any number of segments, none included."""
        plan = RedactionPlan(fields=(FieldRule("**.secret", default=Action.DROP),))
        doc = {"secret": "a@b.com x", "a": {"b": [{"secret": "c@d.com y"}]}}
        out, _ = redact(doc, plan)
        assert out == {"secret": " x", "a": {"b": [{"secret": " y"}]}}

    def test_drop_leaf(self) -> None:
        """With drop_leaf, a value that resolves to drop takes its whole leaf with it."""
        plan = RedactionPlan(
            actions={"EMAIL": Action.DROP},
            fields=(FieldRule("contact", drop_leaf=True), FieldRule("list.*", drop_leaf=True)),
        )
        doc = {"contact": "mail a@b.com", "note": "or c@d.com", "list": ["e@f.com", "ok"]}
        out, counts = redact(doc, plan)
        assert out == {"note": "or ", "list": ["", "ok"]}
        assert counts == Counter({"EMAIL": 3})

    def test_drop_fields(self) -> None:
        """Fields listed for dropping are removed whatever they hold."""
        plan = RedactionPlan(drop_fields=("user", "metadata.*", "messages.*.name"))
        doc = {
            "user": "u1",
            "metadata": {"a": 1, "b": 2},
            "messages": [{"name": "n", "content": "c"}],
        }
        out, _ = redact(doc, plan)
        assert out == {"metadata": {}, "messages": [{"content": "c"}]}

    def test_normalised_text_only_where_something_changed(self) -> None:
        """A leaf with findings goes on normalised; clean leaves go on untouched."""
        out, _ = redact({"a": "x\u200by a\u200b@b.com", "b": "x\u200by"})
        assert out == {"a": "xy <EMAIL_1>", "b": "x\u200by"}

    def test_rescans_until_settled(self) -> None:
        """A mask whose kept tail completes a new card with what follows is masked again."""
        out, counts = redact(
            {"t": "4111 1111 1111 4444 1111 1111 1111"}, RedactionPlan(default=Action.MASK)
        )
        assert not CARD_RE.search(out["t"])  # type: ignore[index]
        assert counts == Counter({"CARD": 2})

    def test_idempotent(self) -> None:
        """Redacting a redacted document changes nothing."""
        doc = {"m": ["a@b.com", "4111111111111111", {"k": '{"x": "c@d.com"}'}]}
        for action in Action:
            plan = RedactionPlan(default=action)
            once, _ = redact(doc, plan)
            twice, counts = redact(once, plan)
            assert twice == once
            assert not counts

    def test_seen_counts_every_detection(self) -> None:
        """`seen` counts kept findings too, for classification."""
        seen: Counter[str] = Counter()
        plan = RedactionPlan(actions={"EMAIL": Action.KEEP})
        _, counts = redact_json(
            {"a": "a@b.com 4111111111111111"},
            plan,
            FakeScanner(),
            TokenVault(),
            Hasher(SECRET),
            seen=seen,
        )
        assert seen == Counter({"EMAIL": 1, "CARD": 1})
        assert counts == Counter({"CARD": 1})

    def test_colliding_keys_fail_closed(self) -> None:
        """Two keys masked to the same text would merge silently: fail instead."""
        with pytest.raises(DetectionError, match="collide"):
            redact(
                {"alice@example.com": 1, "bobby@example.com": 2}, RedactionPlan(default=Action.MASK)
            )

    def test_depth_limit(self) -> None:
        """Nesting past max_depth fails closed; at the limit it is fine."""
        plan = RedactionPlan(max_depth=8)
        ok: object = "a@b.com"
        for _ in range(8):
            ok = [ok]
        redact(ok, plan)
        with pytest.raises(DetectionError, match="deeper"):
            redact([ok], plan)

    def test_depth_counts_json_inside_strings(self) -> None:
        """A JSON string nests inside its field: its depth counts too."""
        inner = orjson.dumps([[["a@b.com"]]]).decode()
        with pytest.raises(DetectionError):
            redact([[{"k": inner}]], RedactionPlan(max_depth=5))

    def test_default_depth_is_64(self) -> None:
        """The default plan accepts 64 levels and refuses 65."""
        doc: object = "x"
        for _ in range(64):
            doc = [doc]
        redact(doc)
        with pytest.raises(DetectionError):
            redact([doc])

    def test_leaf_limit(self) -> None:
        """More string leaves than max_leaves fails closed."""
        plan = RedactionPlan(max_leaves=100)
        redact(["x"] * 100, plan)
        with pytest.raises(DetectionError, match="leaves"):
            redact(["x"] * 101, plan)

    def test_numbers_do_not_count_as_leaves(self) -> None:
        """Numeric tensors do not use up the leaf budget."""
        redact({"data": [0.5] * 1000}, RedactionPlan(max_leaves=10))

    def test_detector_failure_fails_closed_without_content(self) -> None:
        """A detector crash becomes a DetectionError that does not quote the text."""
        with pytest.raises(DetectionError) as caught:
            redact_json(
                {"a": "a@b.com"}, RedactionPlan(), BrokenScanner(), TokenVault(), Hasher(SECRET)
            )
        assert "a@b.com" not in str(caught.value)
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__

    def test_non_json_values_fail_closed(self) -> None:
        """A value the walker cannot scan (a tuple, bytes) is refused, not passed through."""
        with pytest.raises(DetectionError, match="tuple"):
            redact({"a": ("a@b.com",)})
        with pytest.raises(DetectionError, match="bytes"):
            redact([b"a@b.com"])

    def test_detection_error_propagates(self) -> None:
        """A DetectionError from the scanner (size cap, deadline) is raised as it is."""

        class Capped:
            def scan(self, text: str) -> tuple[str, list[Finding]]:
                raise DetectionError("over the size cap")

        with pytest.raises(DetectionError, match="size cap"):
            redact_json({"a": "x"}, RedactionPlan(), Capped(), TokenVault(), Hasher(SECRET))


class TestRedactQuery:
    def test_values_and_names(self) -> None:
        """Percent-encoded values and names are decoded, redacted and re-encoded."""
        out, counts = redact_query(
            "q=a%40b.com&c%40d.com=1&e=",
            RedactionPlan(),
            FakeScanner(),
            TokenVault(),
            Hasher(SECRET),
        )
        assert out == "q=%3CEMAIL_1%3E&%3CEMAIL_2%3E=1&e="
        assert counts == Counter({"EMAIL": 2})

    def test_clean_query_unchanged(self) -> None:
        """A query with nothing to redact is returned as it came, encoding and all."""
        query = "a=1&b=x%20y+z&c"
        out, _ = redact_query(query, RedactionPlan(), FakeScanner(), TokenVault(), Hasher(SECRET))
        assert out is query

    def test_bytes_not_utf8_kept_beside_a_redaction(self) -> None:
        """A percent-encoded byte that is no UTF-8 (a Latin-1 'é' as %E9) goes on as written
        when another value is redacted, not as U+FFFD's three bytes."""
        out, counts = redact_query(
            "name=Ren%E9&q=a%40b.com&raw=%FF%FE",
            RedactionPlan(),
            FakeScanner(),
            TokenVault(),
            Hasher(SECRET),
        )
        assert out == "name=Ren%E9&q=%3CEMAIL_1%3E&raw=%FF%FE"
        assert counts == Counter({"EMAIL": 1})

    def test_too_many_fields(self) -> None:
        """A query with more fields than the leaf budget fails closed."""
        with pytest.raises(DetectionError):
            redact_query(
                "a=1&" * 20,
                RedactionPlan(max_leaves=10),
                FakeScanner(),
                TokenVault(),
                Hasher(SECRET),
            )


class TestRedactHeaders:
    def test_only_named_headers_any_case(self) -> None:
        """Named headers are scanned whatever their case; others and repeats pass as they are."""
        headers = [("X-User", "a@b.com"), ("x-user", "c@d.com"), ("Accept", "e@f.com")]
        plan = RedactionPlan(headers=("X-USER",))
        out, counts = redact_headers(headers, plan, FakeScanner(), TokenVault(), Hasher(SECRET))
        assert out == [("X-User", "<EMAIL_1>"), ("x-user", "<EMAIL_2>"), ("Accept", "e@f.com")]
        assert counts == Counter({"EMAIL": 2})

    def test_mapping_input_and_emptied_header_left_out(self) -> None:
        """A header whose whole value is dropped is left out."""
        plan = RedactionPlan(actions={"EMAIL": Action.DROP}, headers=("x-user", "x-note"))
        headers = {"x-user": "a@b.com", "x-note": "hi a@b.com"}
        out, _ = redact_headers(headers, plan, FakeScanner(), TokenVault(), Hasher(SECRET))
        assert out == [("x-note", "hi ")]


class TestPseudonymsThroughAChain:
    """A pseudonym a nearer router made, as the real detectors see it at the next router."""

    def _redact(self, text: str, action: Action) -> tuple[object, Counter[str], TokenVault]:
        vault = TokenVault()
        plan = RedactionPlan(default=action)
        doc, counts = redact_json({"t": text}, plan, Detectors.default(), vault, Hasher(SECRET))
        return doc, counts, vault

    def test_tokenized_for_a_stricter_tier(self) -> None:
        """A tier that gets tokens gets one for the pseudonym, which restores to it."""
        pseudonym = Hasher(b"another-site-secret-0123456789").pseudonym("EMAIL", "a@b.example")
        doc, counts, vault = self._redact(f"mail {pseudonym} now", Action.TOKENIZE)
        assert doc == {"t": "mail <EMAIL_1> now"}
        assert counts == Counter({"EMAIL": 1})
        assert vault.restore("<EMAIL_1>") == pseudonym

    def test_hashed_again_stays_as_it_is(self) -> None:
        """Hashing a pseudonym keeps it: no pseudonym of a pseudonym, nothing counted."""
        pseudonym = Hasher(SECRET).pseudonym("CARD", "4111111111111111")
        doc, counts, _ = self._redact(f"card {pseudonym}", Action.HASH)
        assert doc == {"t": f"card {pseudonym}"}
        assert counts == Counter()
