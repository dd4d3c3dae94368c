"""Detectors: each entity's positives and near-misses, evasions, limits, invariants."""

from __future__ import annotations

import base64
import json
import random
import string
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from faker import Faker
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum import verhoeff

from router.redaction import validators as v
from router.redaction.detectors import CustomPattern, Detectors
from router.redaction.patterns import Detector, Pattern
from router.redaction.refiners import phone_refine
from router.redaction.types import DetectionError, Entity, Finding

DETECTORS = Detectors.default()


def found(text: str, detectors: Detectors = DETECTORS) -> list[tuple[str, str]]:
    """(entity, value) of every finding, values taken from the normalised text."""
    normalized, findings = detectors.scan(text)
    return [(str(f.entity), f.value(normalized)) for f in findings]


def fake(locale: str = "en_US", seed: int = 4) -> Faker:
    f = Faker(locale)
    f.seed_instance(seed)
    return f


def assert_found(entity: str, value: str, template: str = "x {} y") -> None:
    text = template.format(value)
    assert (entity, value) in found(text), (entity, value, found(text))


def assert_clean(text: str) -> None:
    assert found(text) == [], found(text)


class TestEmail:
    def test_faker_emails(self) -> None:
        """Generated addresses are found whole, in prose and in JSON."""
        f = fake()
        for _ in range(50):
            value = f.email()
            assert_found("EMAIL", value, "Write to {} today.")
            assert_found("EMAIL", value, '{{"to": "{}"}}')

    def test_international_address(self) -> None:
        """Letters outside ASCII are part of an address."""
        assert_found("EMAIL", "jürgen.müller@bücher.de")

    def test_backslash_escaped_at_sign(self) -> None:
        """An address whose @ is written as a \\u0040 or \\x40 escape in prose is found, and
        located over the escape as written."""
        for at in ("\\u0040", "\\x40"):
            text = f"mail john.doe{at}example.com please"
            spans = [(str(f.entity), text[f.start : f.end]) for f in DETECTORS.locate(text)]
            assert spans == [("EMAIL", f"john.doe{at}example.com")], spans

    @pytest.mark.parametrize(
        "value",
        ["john [at] example [dot] com", "john.doe(at)example.com", "Jane {AT} uni-bonn {DOT} de"],
    )
    def test_spelled_out_at_and_dot(self, value: str) -> None:
        """An address with its @ (and dots) spelled out in brackets is found whole."""
        assert_found("EMAIL", value, "write to {} please")

    def test_spelled_out_at_needs_a_domain(self) -> None:
        """A bracketed "at" without a dotted domain after it is prose, not an address."""
        assert_clean("look (at) this, and x(at)y")

    def test_apostrophe_in_the_local_part(self) -> None:
        """o'brien@... is found whole (not brien@..., which left "o'" behind); quotes around
        an address stay outside it."""
        assert_found("EMAIL", "o'brien@example.com", "mail {} now")
        assert_found("EMAIL", "sean.o'neil@example.ie", "mail {} now")
        assert_found("EMAIL", "john@example.com", "say '{}' ok")

    def test_near_misses(self) -> None:
        """An @ alone, a handle and a dotless domain are not addresses."""
        assert_clean("meet @ noon, ping @alice, user@localhost, a@b.c, @@@@")


class TestCard:
    @pytest.mark.parametrize(
        "kind",
        ["visa13", "visa16", "visa19", "mastercard", "amex", "discover", "jcb15", "jcb16",
         "maestro", "diners"],
    )  # fmt: skip
    def test_faker_cards_of_every_brand(self, kind: str) -> None:
        """Every brand Faker knows, plain and grouped by four with spaces or dashes."""
        f = fake(seed=hash(kind) % 1000)
        for _ in range(20):
            number = f.credit_card_number(kind)
            assert_found("CARD", number, "card {} exp 09/27")
            grouped = " ".join(number[i : i + 4] for i in range(0, len(number), 4))
            assert_found("CARD", grouped, "card: {}.")
            assert_found("CARD", grouped.replace(" ", "-"), "pan={}&x=1")

    @pytest.mark.parametrize(
        "number",
        ["2221000000000009", "2720999999999996", "4000000000000000006", "6759649826438453",
         "378282246310005", "6212345678901232", "5019717010103742"],
    )  # fmt: skip
    def test_issuer_ranges(self, number: str) -> None:
        """2-series Mastercard, 19-digit Visa, Maestro, Amex, UnionPay, Dankort."""
        assert v.is_card(number)
        assert_found("CARD", number)

    def test_amex_grouping(self) -> None:
        """Amex is printed 4-6-5."""
        assert_found("CARD", "3782 822463 10005")

    def test_luhn_off_by_one(self) -> None:
        """Changing any one digit breaks the Luhn check: no finding."""
        f = fake()
        for _ in range(30):
            number = f.credit_card_number("visa16")
            i = random.Random(number).randrange(len(number))
            bad = number[:i] + str((int(number[i]) + 1) % 10) + number[i + 1 :]
            assert not v.luhn(bad)
            assert ("CARD", bad) not in found(f"card {bad}")

    def test_plain_long_numbers_and_glued_digits(self) -> None:
        """A longer digit run, or a card number glued to letters, is not a card."""
        assert_clean("id 411111111111111111111 and x4111111111111111 and 4111111111111111abc")

    @pytest.mark.parametrize(
        "sep", [".", "/", "\t", "\n", "\r\n", " / ", " - ", "  "]
    )  # fmt: skip
    def test_other_group_separators(self, sep: str) -> None:
        """Groups split by dots, slashes, tabs, line breaks or spaced dashes are a card too."""
        assert_found("CARD", sep.join(["4111", "1111", "1111", "1111"]), "card {} exp 09/27")
        assert_found("CARD", sep.join(["3782", "822463", "10005"]), "amex: {}.")

    def test_after_an_escaped_line_break(self) -> None:
        """A pasted log's literal \\n right before a card does not glue it to the letter n,
        and the finding covers the card alone."""
        text = "log: charged\\n4111 1111 1111 1111\\tok"
        spans = [(str(f.entity), text[f.start : f.end]) for f in DETECTORS.locate(text)]
        assert spans == [("CARD", "4111 1111 1111 1111")], spans

    def test_grouped_by_em_dashes(self) -> None:
        """A card whose dashes a word processor turned into em dashes is found, as written."""
        text = "card 4111\u20141111\u20141111\u20141111 ok"
        spans = [(str(f.entity), text[f.start : f.end]) for f in DETECTORS.locate(text)]
        assert spans == [("CARD", "4111\u20141111\u20141111\u20141111")], spans

    def test_wrapped_over_two_lines(self) -> None:
        """A card written with spaces whose line wraps inside it is found whole."""
        assert_found("CARD", "4111 1111\n1111 1111", "card {} exp 09/27")
        assert_found("CARD", "4111 1111 \r\n1111 1111", "card {} exp 09/27")

    def test_mixed_separators_are_not_one_card(self) -> None:
        """Groups joined by different separators are not read as one number."""
        assert_clean("ref 4111.1111-1111 1111 end")

    def test_card_after_unrelated_number(self) -> None:
        """A number in front of a card does not hide it."""
        assert_found("CARD", "4111 1111 1111 1111", "ref 12 2024 {} ok")


class TestFormEncoded:
    """A URL in a message with a form-encoded query writes a space as '+'."""

    @pytest.mark.parametrize(
        ("entity", "value"),
        [("CARD", "4111+1111+1111+1111"), ("CARD", "3782+822463+10005"),
         ("IBAN", "GB82+WEST+1234+5698+7654+32"), ("PHONE", "+44+20+7946+0958"),
         ("PHONE", "+1+415+555+2671")],
    )  # fmt: skip
    def test_plus_as_space_in_a_query(self, entity: str, value: str) -> None:
        """A card, IBAN or phone number whose groups a query joins with '+' is found whole."""
        assert_found(entity, value, "see https://shop.example/pay?pan={}&ok=1")

    def test_plus_arithmetic_is_no_card(self) -> None:
        """Two numbers added are not a card."""
        assert not found("4111+1111 = 5222")


class TestIban:
    def test_faker_ibans(self) -> None:
        """IBANs of several countries, compact and grouped by four."""
        for locale in ("de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL", "en_GB"):
            f = fake(locale)
            for _ in range(10):
                value = f.iban()
                assert_found("IBAN", value, "IBAN {} please")
                grouped = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
                assert_found("IBAN", grouped, "to {} EUR")

    def test_grouped_with_dashes(self) -> None:
        """IBANs grouped by dashes, dots, tabs or double spaces, or wrapped, are found whole."""
        assert_found("IBAN", "DE89-3704-0044-0532-0130-00", "IBAN {} and more text")
        assert_found("IBAN", "GB82-WEST-1234-5698-7654-32", "iban={}&amount=5")
        assert_found("IBAN", "FR14-2004-1010-0505-0001-3M02-606", "pay to {}.")
        assert_found("IBAN", "DE89.3704.0044.0532.0130.00", "IBAN {}.")
        assert_found("IBAN", "DE89\t3704\t0044\t0532\t0130\t00", "IBAN\t{}\tEUR")
        assert_found("IBAN", "DE89  3704  0044  0532  0130  00", "IBAN  {}  EUR")
        assert_found("IBAN", "DE89 3704 0044\n0532 0130 00", "IBAN {} (wrapped)")
        assert_found("IBAN", "DE89 3704 0044 \r\n0532 0130 00", "IBAN {} (wrapped)")

    def test_mixed_grouping_and_bad_check_with_dashes(self) -> None:
        """Dashes do not relax the mod-97 check, and spaces and dashes are not mixed."""
        assert_clean("IBAN DE88-3704-0044-0532-0130-00 please")
        assert_clean("IBAN DE89-3704 0044-0532 0130-00 please")

    def test_invalid_check_digits(self) -> None:
        """A wrong mod-97 check gives no finding."""
        assert_clean("IBAN DE88 3704 0044 0532 0130 00 please")

    def test_two_ibans_in_a_row(self) -> None:
        """The greedy match of one IBAN does not swallow the next."""
        text = "DE89 3704 0044 0532 0130 00 GB82 WEST 1234 5698 7654 32"
        assert [e for e, _ in found(text)] == ["IBAN", "IBAN"]


class TestUsSsn:
    def test_faker_ssns(self) -> None:
        """Dashed SSNs anywhere; unseparated ones next to the word SSN."""
        f = fake()
        for _ in range(30):
            value = f.ssn()
            assert_found("US_SSN", value, "number {}.")
            assert_found("US_SSN", value.replace("-", ""), "SSN: {}")

    @pytest.mark.parametrize(
        "value", ["000-12-3456", "666-12-3456", "900-12-3456", "123-00-4567", "123-45-0000"]
    )
    def test_never_issued(self, value: str) -> None:
        """Area 000/666/9xx, group 00 and serial 0000 are not SSNs."""
        assert ("US_SSN", value) not in found(f"SSN {value}")

    def test_dotted_ssn(self) -> None:
        """An SSN grouped by dots is found; a dotted run longer than one (a version) is not."""
        assert_found("US_SSN", "536.22.8744", "my ssn is {}.")
        assert_clean("build 536.22.8744.1 and 1.536.22.8744 and ssn 000.22.8744")

    def test_plain_nine_digits_without_context(self) -> None:
        """Nine digits without the word SSN nearby are an order number, not an SSN."""
        assert_clean("order 291768182 shipped")


class TestIpAddress:
    def test_faker_addresses(self) -> None:
        """IPv4 (public and private) and IPv6."""
        f = fake()
        for _ in range(30):
            assert_found("IP_ADDRESS", f.ipv4(), "from {} at noon")
            assert_found("IP_ADDRESS", f.ipv6(), "from {} at noon")

    @pytest.mark.parametrize(
        "text",
        ["v1.2.3.4", "version 10.2.0.1", "1.2.3.4.5", "999.1.1.1", "10:30:45", "std::vector",
         "00:1A:2B:3C:4D:5E", "Build 4.0.1.2 released"],
    )  # fmt: skip
    def test_near_misses(self, text: str) -> None:
        """Versions, times, MAC addresses and C++ scopes are not IP addresses."""
        assert_clean(text)

    def test_end_of_sentence(self) -> None:
        """A full stop after an address is punctuation."""
        assert_found("IP_ADDRESS", "10.0.0.1", "ssh to {}.")


class TestPhone:
    @pytest.mark.parametrize("locale", ["en_US", "en_GB", "fr_FR", "de_DE", "nl_NL", "es_ES"])
    def test_faker_numbers_with_context(self, locale: str) -> None:
        """Generated numbers next to a word such as 'phone' (most formats need no word)."""
        f = fake(locale)
        for _ in range(30):
            value = f.phone_number()
            if locale == "de_DE" and value.startswith("0000"):
                continue  # Faker's de_DE also emits runs of zeros that no exchange uses
            assert_found("PHONE", value, "Phone: {} (mobile)")

    @pytest.mark.parametrize(
        "value",
        ["+1-780-563-6083x7783", "+44 20 7946 0958", "+33 (0)1 41 63 60 83", "(591)341-7776",
         "206.269.0743", "0161 496 0066", "+919141777631"],
    )  # fmt: skip
    def test_formats_found_without_context(self, value: str) -> None:
        """International, North American and trunk-0 national formats stand on their own."""
        assert_found("PHONE", value, "reach {} later")

    @pytest.mark.parametrize(
        "text",
        ["2024-01-15 10:30:45", "on 15.01.2024", "id 550e8400-e29b-41d4-a716-446655440000",
         "order 12345678901", "ts 1700000000000", "ISBN 978-3-16-148410-0", "$1,234,567.89"],
    )  # fmt: skip
    def test_near_misses(self, text: str) -> None:
        """Timestamps, dates, UUIDs, plain long numbers and ISBNs are not phone numbers."""
        assert_clean(text)


class TestNationalId:
    @pytest.mark.parametrize(
        ("locale", "method", "context"),
        [("es_ES", "nif", ""), ("es_ES", "nie", ""), ("fr_FR", "ssn", ""), ("it_IT", "ssn", ""),
         ("sv_SE", "ssn", ""), ("nl_NL", "ssn", "BSN"), ("pl_PL", "pesel", "PESEL")],
    )  # fmt: skip
    def test_faker_ids(self, locale: str, method: str, context: str) -> None:
        """Checksummed ids; the plain-digit ones (BSN, PESEL) next to their name."""
        f = fake(locale)
        for _ in range(20):
            assert_found("NATIONAL_ID", getattr(f, method)(), context + " {} ok")

    def test_aadhaar_and_nino(self) -> None:
        """Aadhaar (Verhoeff, next to its name) and a UK National Insurance number."""
        body = "23456789012"
        assert_found("NATIONAL_ID", body + verhoeff.calc_check_digit(body), "Aadhaar {}")
        assert_found("NATIONAL_ID", "AB 12 34 56 C", "NI number {}")

    def test_weak_ids_need_their_name(self) -> None:
        """A valid BSN without 'BSN' nearby is just a number."""
        assert_clean("ticket 740389129 closed")

    def test_bad_check_character(self) -> None:
        """A DNI with the wrong letter is not one."""
        assert_clean("DNI 12345678A")


class TestSecrets:
    def test_aws_key_id_and_secret(self) -> None:
        """An access key id anywhere; a 40-character secret next to 'aws ... key'."""
        assert_found("AWS_KEY", "AKIAIOSFODNN7EXAMPLE")
        secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        assert_found("AWS_KEY", secret, "aws_secret_access_key = {}")

    def test_github_tokens(self) -> None:
        """Classic and fine-grained GitHub token formats."""
        rng = random.Random(1)
        alnum = string.ascii_letters + string.digits
        for prefix in ("ghp_", "gho_", "ghs_", "ghu_", "ghr_"):
            assert_found("GITHUB_TOKEN", prefix + "".join(rng.choices(alnum, k=36)))
        pat = "github_pat_" + "".join(rng.choices(alnum, k=22)) + "_" + "a" * 59
        assert_found("GITHUB_TOKEN", pat)

    def test_jwt(self) -> None:
        """Three base64url parts whose header is a JSON object."""

        def b64(obj: object) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

        token = f"{b64({'alg': 'HS256'})}.{b64({'sub': '42'})}.c2lnbmF0dXJl"
        assert_found("JWT", token, "token {} expired")
        assert_clean("eyJzzzz.eyJzzzz.x is not JSON")

    def test_bearer_token(self) -> None:
        """The credential after 'Bearer' or an access_token parameter, not the scheme."""
        assert_found("BEARER_TOKEN", "abc123DEF456ghi789", "Authorization: Bearer {}")
        assert_found("BEARER_TOKEN", "abc123DEF456ghi789", "/cb?access_token={}&x=1")

    def test_near_misses(self) -> None:
        """Lookalike prefixes of the wrong length or alphabet are not secrets."""
        assert_clean("AKIA1234 ghp_short bearer of bad news")


class TestDateOfBirth:
    @pytest.mark.parametrize(
        "fmt", ["%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%B %d, %Y", "%d %B %Y", "%d %b %Y"]
    )
    def test_dates_next_to_birth_words(self, fmt: str) -> None:
        """Faker birth dates in many formats after 'born', 'DOB', 'geboren'..."""
        f = fake()
        for template in ("I was born on {}.", "DOB: {}", '"date_of_birth": "{}"', "geboren {}"):
            value = f.date_of_birth().strftime(fmt)
            assert_found("DATE_OF_BIRTH", value, template)

    def test_other_dates_are_not_birth_dates(self) -> None:
        """A date without a birth word nearby, or an impossible date, is not found."""
        assert_clean("The meeting is on 1985-03-12.")
        assert_clean("born 1985-02-30")


class TestEvasions:
    """P3: transforms that normalisation undoes."""

    TRANSFORMS: dict[str, Callable[[str], str]] = {
        "zero-width": lambda s: "\u200b".join(s),
        "soft hyphen": lambda s: "\u00ad".join(s),
        "full-width": lambda s: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s),
        "percent": lambda s: "".join(f"%{b:02X}" for b in s.encode()),
        "html": lambda s: "".join(f"&#{ord(c)};" for c in s),
        "html hex": lambda s: "".join(f"&#x{ord(c):x};" for c in s),
    }

    @pytest.mark.parametrize("transform", list(TRANSFORMS))
    @pytest.mark.parametrize(
        ("entity", "value"),
        [("EMAIL", "john.doe@example.com"), ("CARD", "4111 1111 1111 1111"),
         ("IBAN", "DE89370400440532013000"), ("US_SSN", "291-76-8182")],
    )  # fmt: skip
    def test_detected_after_normalisation(self, transform: str, entity: str, value: str) -> None:
        """The disguised value is found, and locate() points at the disguised characters."""
        disguised = self.TRANSFORMS[transform](value)
        text = f"please use {disguised} thanks"
        assert (entity, value) in found(text)
        located = [f for f in DETECTORS.locate(text) if f.entity == entity]
        assert [f.value(text) for f in located] == [disguised]

    @pytest.mark.parametrize("mark", ["\u0336", "\u0332", "\u20e3", "\u0338", "\u1dc4"])
    @pytest.mark.parametrize(
        ("entity", "value"),
        [("EMAIL", "john.doe@example.com"), ("CARD", "4111 1111 1111 1111"),
         ("IBAN", "DE89370400440532013000"), ("PHONE", "+44 20 7946 0958")],
    )  # fmt: skip
    def test_combining_marks_on_each_character(self, mark: str, entity: str, value: str) -> None:
        """Text from strikethrough and underline generators, or keycaps (a mark after each
        character, the space too) is found: only the last character's own mark stays out."""
        disguised = "".join(c + mark for c in value)
        text = f"please use {disguised} thanks"
        assert (entity, value) in found(text)
        located = [f for f in DETECTORS.locate(text) if f.entity == entity]
        assert [f.value(text) for f in located] == [disguised[: -len(mark)]]

    def test_marks_on_other_scripts_stay_their_letters(self) -> None:
        """A mark on a non-ASCII letter is part of it (Devanagari vowel signs): such an
        e-mail address is found whole, not cut after its last mark (only its last letter
        and domain were, the rest of the name went on)."""
        text = "write to \u0930\u093e\u0939\u0941\u0932@example.com"
        located = [f.value(text) for f in DETECTORS.locate(text) if f.entity == "EMAIL"]
        assert located == ["\u0930\u093e\u0939\u0941\u0932@example.com"]
        idn = (
            "\u0930\u093e\u0939\u0941\u0932@\u0939\u093f\u0902\u0926\u0940.\u092d\u093e\u0930\u0924"
        )
        assert [f.value(f"mail {idn} ok") for f in DETECTORS.locate(f"mail {idn} ok")] == [idn]


class TestLimits:
    def test_size_cap(self) -> None:
        """Text over max_chars raises DetectionError before any work."""
        with pytest.raises(DetectionError):
            DETECTORS.scan("a" * 101, max_chars=100)

    def test_deadline(self) -> None:
        """A deadline already past raises DetectionError."""
        with pytest.raises(DetectionError):
            DETECTORS.scan("mail john@example.com", deadline=time.monotonic() - 1)

    def test_deadline_passed_inside_the_last_refiner_fails(self) -> None:
        """A deadline that passes while the last detector refines one match (a run of many
        card numbers is one) fails the scan, instead of returning findings late."""
        clock = [0.0]

        def slow(value: str, *, deadline: float | None = None) -> list[tuple[int, int]]:
            clock[0] += 10.0  # the refiner's work outlasts the deadline
            return [(0, len(value))]

        only = Detector("CARD", Pattern(r"(?:^|\D)(\d{16})(?:\D|$)"), refine=slow)
        detectors = Detectors([only])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(
                "router.redaction.detectors.time", SimpleNamespace(monotonic=lambda: clock[0])
            )
            with pytest.raises(DetectionError, match="deadline"):
                detectors.scan("card 4111111111111111", deadline=1.0)

    def test_one_long_match_stops_at_the_deadline(self) -> None:
        """A run of 20,000 card numbers is one match, refined group by group: the refiner
        checks the deadline as it goes (raising on the first check past it), not after it."""
        calls = [0]

        def past() -> float:
            calls[0] += 1
            return float("inf")  # the refiner's clock only: it reads the deadline as passed

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("router.redaction.refiners.time", SimpleNamespace(monotonic=past))
            with pytest.raises(DetectionError, match="deadline"):
                DETECTORS.scan(
                    "4111 1111 1111 1111 " * 20_000,
                    max_chars=10_000_000,
                    deadline=time.monotonic() + 60,
                )
        assert calls[0] == 1

    def test_phone_refiner_stops_at_the_deadline(self) -> None:
        """The phone refiner, given a long run of digit groups, checks the deadline too."""
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("router.redaction.refiners.time", SimpleNamespace(monotonic=lambda: 2.0))
            with pytest.raises(DetectionError, match="deadline"):
                phone_refine("12 " * 5_000, deadline=1.0)

    def test_error_messages_carry_no_content(self) -> None:
        """DetectionError text names sizes, never the scanned content."""
        with pytest.raises(DetectionError) as info:
            DETECTORS.scan("secret-4111111111111111" * 10, max_chars=100)
        assert "4111" not in str(info.value)

    @pytest.mark.parametrize(
        "text",
        [("a." * 8192), ("1234567890" * 1639), "@" * 16384, "-" * 16384, "." * 16384,
         ("4111 " * 3276), ("00 " * 5461), ("DE89 " * 3276), ("ab:" * 5461),
         ("%25" * 5461), ("a\u200b" * 8192), ("\uff11" * 16384), ("born 1/1/1990 " * 1170)],
    )  # fmt: skip
    def test_adversarial_16k_inputs_finish(self, text: str) -> None:
        """16 KB adversarial inputs are scanned to the end (their time is measured in
        bench/redaction_eval.py, not asserted here)."""
        normalized, findings = DETECTORS.scan(text)
        assert all(0 <= f.start < f.end <= len(normalized) for f in findings)


class TestCustomPatterns:
    def test_custom_pattern_is_reported_under_its_name(self) -> None:
        """A bundle pattern finds its values; a group named 'value' narrows the finding."""
        detectors = Detectors.default(
            custom=[CustomPattern("EMPLOYEE_ID", r"\bE-\d{6}\b"),
                    CustomPattern("PROJECT", r"project (?P<value>[A-Z]{3}-\d+)")]
        )  # fmt: skip
        assert found("ask E-123456 about project ABC-42", detectors) == [
            ("EMPLOYEE_ID", "E-123456"),
            ("PROJECT", "ABC-42"),
        ]
        assert {"EMPLOYEE_ID", "PROJECT", "EMAIL"} <= detectors.entities

    @pytest.mark.parametrize(
        ("name", "regex"),
        [("BACKREF", r"(a)\1"), ("LOOKAHEAD", r"a(?=b)"), ("EMPTY", r"x*"), ("", "x"),
         ("_HIDDEN", "x"), ("BYTES", r"\C")],
    )  # fmt: skip
    def test_invalid_custom_patterns_are_rejected(self, name: str, regex: str) -> None:
        """Non-RE2 syntax, empty matches, bad names: ValueError at load time."""
        with pytest.raises(ValueError, match=r"custom pattern|name"):
            Detectors.default(custom=[CustomPattern(name, regex)])


class TestResolution:
    def test_overlaps_merge_into_the_longest(self) -> None:
        """A JWT that is also a bearer token is reported once."""
        header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
        token = f"{header}.eyJzdWIiOiIxIn0.sig"
        findings = DETECTORS.detect(f"Authorization: Bearer {token}")
        assert [f.entity for f in findings] == [Entity.JWT]

    def test_uuid_suppresses_digits_inside_it(self) -> None:
        """Digits inside a UUID are not a card, phone or SSN."""
        assert_clean("id 12345678-1234-4111-1111-411111111111 done")

    def test_non_ascii_offsets_are_characters(self) -> None:
        """Offsets count characters, not UTF-8 bytes."""
        text = "Grüße — schreib an jürgen@beispiel.de ✓"
        normalized, findings = DETECTORS.scan(text)
        assert [f.value(normalized) for f in findings] == ["jürgen@beispiel.de"]


class TestPrefilter:
    def test_failed_prefilter_runs_every_detector(self) -> None:
        """A set match that lost its sentinel (DFA out of memory) falls back to all detectors."""

        class Blind:
            def Match(self, data: bytes) -> list[int]:
                return []

        detectors = Detectors.default()
        detectors._prefilter = Blind()
        assert found("mail john@example.com", detectors) == [("EMAIL", "john@example.com")]

    @settings(max_examples=200, deadline=None)
    @given(st.text(alphabet="0123456789 -.@:+()/abcxAKIDEeyJ_%&#;", max_size=300))
    def test_prefilter_agrees_with_each_pattern(self, text: str) -> None:
        """The set's verdict per pattern equals that pattern searched alone."""
        data = text.encode()
        chosen = {id(d) for d in DETECTORS._matching(data)}
        for det in DETECTORS._detectors:
            if det.pattern.search(data, 0) is not None and not det.context:
                assert id(det) in chosen, det.name


def _check(text: str, findings: list[Finding], size: int) -> None:
    last_end = 0
    for f in findings:
        assert 0 <= f.start < f.end <= size
        assert f.start >= last_end
        last_end = f.end


_fragments = st.sampled_from(
    ["john@example.com", "4111 1111 1111 1111", "+44 20 7946 0958", "DE89370400440532013000",
     "291-76-8182", "10.0.0.1", "::1", "Bearer abcdefghijkl", "born 1990-01-01", " ", ".", "-",
     "@", "%40", "&#64;", "\u200b", "\uff14", "0", "a", "é", "\ud800"]
)  # fmt: skip
_texts = st.one_of(st.text(max_size=300), st.lists(_fragments, max_size=40).map("".join))


class TestProperties:
    @settings(max_examples=500, deadline=None)
    @given(_texts)
    def test_findings_in_bounds_sorted_and_disjoint(self, text: str) -> None:
        """On any text: only DetectionError may escape; findings are in bounds, no overlap."""
        try:
            normalized, findings = DETECTORS.scan(text)
            located = DETECTORS.locate(text)
        except DetectionError:
            return
        _check(normalized, findings, len(normalized))
        _check(text, located, len(text))
        assert len(located) <= len(findings)
