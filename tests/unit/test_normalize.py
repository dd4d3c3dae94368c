"""Normalisation before detection: what it undoes, what it leaves alone, how it maps back."""

from __future__ import annotations

import sys
import unicodedata
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.redaction.normalize import _FOLD, _INVISIBLE, MAX_ROUNDS, normalize, normalize_mapped
from router.redaction.types import DetectionError


class TestNormalize:
    def test_ascii_without_escapes_is_returned_as_is(self) -> None:
        """Plain ASCII text takes the fast path and comes back as the same object."""
        text = "Hello, world: 4111 1111 1111 1111"
        assert normalize(text) is text

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("jo\u200bhn@exa\u200dmple.com", "john@example.com"),  # zero-width space / joiner
            ("41\u00ad11 1111", "4111 1111"),  # soft hyphen
            ("\ufeffbom", "bom"),
            ("a\u202eb\u2066c\u200e", "abc"),  # bidi controls
            ("tag\U000e0041\U000e007f", "tag"),  # tag characters
            ("x\ufe0fy\u034fz", "xyz"),  # variation selector, combining grapheme joiner
        ],
    )
    def test_invisible_characters_are_removed(self, raw: str, expected: str) -> None:
        """Characters that render as nothing cannot hide a value from the detectors."""
        assert normalize(raw) == expected

    def test_nfkc_folds_compatibility_forms(self) -> None:
        """Full-width digits and letters, ligatures and no-break spaces become plain."""
        assert normalize("\uff14\uff11\uff11\uff11\u00a0\uff41\ufb01") == "4111 afi"

    def test_other_scripts_digits_and_dashes_fold_to_ascii(self) -> None:
        """Arabic-Indic and Devanagari digits, en dash and minus become ASCII."""
        assert normalize("\u0664\u0661\u0661\u0661\u2013\u0967\u0968\u2212") == "4111-12-"

    def test_em_dash_and_horizontal_bar_fold_to_hyphen(self) -> None:
        """The dashes a word processor makes of a typed hyphen become ASCII too."""
        assert normalize("536\u201422\u20158744 4111\ufe581111") == "536-22-8744 4111-1111"

    def test_lone_surrogates_become_replacement_characters(self) -> None:
        """The result always encodes as UTF-8."""
        assert normalize("a\ud800b") == "a\ufffdb"

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("john%40example.com", "john@example.com"),
            ("john%2540example.com", "john@example.com"),  # double encoding
            ("caf%C3%A9", "café"),
            ("%FF%41", "%FFA"),  # a byte that is not UTF-8 stays encoded
            ("100% sure %zz %4", "100% sure %zz %4"),  # not %XX: untouched
            ("+44%2020", "+44 20"),  # '+' is not a space here
        ],
    )
    def test_percent_decoding(self, raw: str, expected: str) -> None:
        """Valid %XX runs decode as UTF-8; anything else is left exactly as written."""
        assert normalize(raw) == expected

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("john&#64;example.com", "john@example.com"),
            ("john&#x40;example&period;com", "john@example.com"),
            ("a&amp;#64;b", "a@b"),  # an encoded entity
            ("?a=1&copy=2", "?a=1&copy=2"),  # no ';': a query string, not an entity
            ("john&#64example.com", "john@example.com"),  # decimal: browsers show '@' too
            ("john&#x40gmail.com", "john@gmail.com"),  # hex as well
            ("&#x40e", "\u040e"),  # as many hex digits as follow, as a browser reads it
            ("card 4&#49 111", "card 41 111"),
            ("&unknownname;", "&unknownname;"),
        ],
    )
    def test_html_entities(self, raw: str, expected: str) -> None:
        """Character references ending in ';' decode, and numeric ones without it (a browser
        shows them as the character); named ones without it do not."""
        assert normalize(raw) == expected

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("john\\u0040example.com", "john@example.com"),
            ("john\\x40example\\x2Ecom", "john@example.com"),
            ("john\\u{40}example.com \\u{1F600}", "john@example.com \U0001f600"),
            ("\\u{d800} \\u{110000}", "\\u{d800} \\u{110000}"),  # no such character
            ("card \\u0034111 1111", "card 4111 1111"),
            ("smile \\ud83d\\ude00!", "smile \U0001f600!"),  # a surrogate pair
            ("lone \\ud83d here", "lone \\ud83d here"),  # a lone surrogate stays as written
            ("C:\\users\\xyz \\x7f \\u12", "C:\\users\\xyz \\x7f \\u12"),
            ("a\\u005cu0040b", "a@b"),  # an escaped escape unwinds round by round
            ("log\\ncard\\t4111\\r\\n", "log\ncard\t4111\r\n"),
        ],
    )
    def test_backslash_escapes(self, raw: str, expected: str) -> None:
        """\\uXXXX, printable \\xXX and \\n \\t \\r written out in text decode; others stay."""
        assert normalize(raw) == expected

    def test_mixed_layers_decode_in_one_call(self) -> None:
        """Percent inside HTML inside percent unwinds round by round."""
        assert normalize("a%26%2364%3Bb") == "a@b"

    def test_encoding_nested_too_deep_fails_closed(self) -> None:
        """More layers than MAX_ROUNDS undo raises instead of returning a half-decoded text."""
        text = "a%" + "25" * (MAX_ROUNDS + 1) + "40b"
        with pytest.raises(DetectionError):
            normalize(text)

    def test_invisible_table_covers_every_format_character(self) -> None:
        """Every Cf character of the running Python's Unicode table is removed."""
        missing = [
            hex(code)
            for code in range(sys.maxunicode + 1)
            if unicodedata.category(chr(code)) == "Cf" and not _INVISIBLE.fullmatch(chr(code))
        ]
        assert missing == []

    def test_digit_table_covers_every_decimal_digit(self) -> None:
        """Every Nd character maps to its ASCII digit."""
        wrong = [
            hex(code)
            for code in range(0x80, sys.maxunicode + 1)
            if unicodedata.category(chr(code)) == "Nd"
            and chr(code).translate(_FOLD) != str(unicodedata.decimal(chr(code)))
            and unicodedata.normalize("NFKC", chr(code)) == chr(code)
        ]
        assert wrong == []


class TestOffsets:
    @pytest.mark.parametrize(
        ("raw", "value"),
        [
            ("mail: jo\u200bhn%40ex&#97;mple.com end", "jo\u200bhn%40ex&#97;mple.com"),
            (
                "card \uff14\uff11\uff11\uff11 \uff11\uff11\uff11\uff11!",
                "\uff14\uff11\uff11\uff11 \uff11\uff11\uff11\uff11",
            ),
            ("x cafe\u0301 \ufb01le y", "cafe\u0301 \ufb01le"),
            ("mail john\\u0040example.com now", "john\\u0040example.com"),
        ],
    )
    def test_span_maps_back_to_the_encoded_original(self, raw: str, value: str) -> None:
        """A span of the normalised text maps to the characters that produced it."""
        mapped = normalize_mapped(raw)
        target = normalize(value)
        start = mapped.text.index(target)
        a, b = mapped.to_original(start, start + len(target))
        assert raw[a:b] == value

    def test_unchanged_text_maps_to_itself(self) -> None:
        """Without edits, offsets are the identity."""
        assert normalize_mapped("plain").to_original(1, 3) == (1, 3)


_pieces = st.sampled_from(
    ["a", "4", " ", "%", "%40", "%25", "&", "&#64;", "&amp;", "\u200b", "\u00ad", "\uff14",
     "e\u0301", "\ufb01", "\u0664", "\ud800", "\U0001f600", "\u1100\u1161", ";", "#"]
)  # fmt: skip
_texts = st.one_of(st.text(max_size=200), st.lists(_pieces, max_size=60).map("".join))


class TestProperties:
    @settings(max_examples=400, deadline=None)
    @given(_texts)
    def test_idempotent_and_utf8(self, text: str) -> None:
        """normalize is a fixed point, encodes as UTF-8 and leaves no invisible character."""
        try:
            once = normalize(text)
        except DetectionError:
            return
        assert normalize(once) == once
        once.encode("utf-8")
        assert _INVISIBLE.search(once) is None

    @settings(max_examples=300, deadline=None)
    @given(_texts, st.data())
    def test_mapped_spans_stay_in_bounds_and_ordered(self, text: str, data: st.DataObject) -> None:
        """Any span of the result maps inside the input, start <= end."""
        try:
            mapped = normalize_mapped(text)
        except DetectionError:
            return
        n = len(mapped.text)
        start = data.draw(st.integers(0, n))
        end = data.draw(st.integers(start, n))
        a, b = mapped.to_original(start, end)
        assert 0 <= a <= b <= len(text)


class TestDeadline:
    def test_a_long_run_to_compose_stops_at_the_deadline(self) -> None:
        """Normalising a long run of characters NFKC expands (U+FDFA, 18 characters each)
        checks the deadline as it goes, instead of running seconds past it."""
        calls = [0]

        def clock() -> float:
            calls[0] += 1
            return float(calls[0])

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("router.redaction.normalize.time", SimpleNamespace(monotonic=clock))
            with pytest.raises(DetectionError, match="deadline"):
                normalize_mapped("\ufdfa" * 20_000, deadline=2.0)
        assert calls[0] < 10  # stopped within a few checks, not at the end

    @pytest.mark.parametrize("unit", ["\ufdfa", "%40a", "&#64;a", "\\x40a"])
    def test_each_decoding_pass_checks_the_deadline_as_it_goes(self, unit: str) -> None:
        """Each decoding pass (NFKC, percent, HTML, backslash escapes) over 20,000 encoded
        units checks the deadline every few thousand of them, not only between passes."""
        calls = [0]

        def clock() -> float:
            calls[0] += 1
            return 0.0  # never past: count the checks

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("router.redaction.normalize.time", SimpleNamespace(monotonic=clock))
            normalize_mapped(unit * 20_000, deadline=1.0)
        assert calls[0] >= 20_000 // 4096 + 2

    def test_a_run_not_normalised_whole_once_the_deadline_passed(self) -> None:
        """NFKC of a whole long run (one call, its cost that of its 18-fold output) is not
        started once the deadline passed while normalising it piece by piece."""
        longest = [0]

        def normalize(form: str, text: str) -> str:
            longest[0] = max(longest[0], len(text))
            return unicodedata.normalize(form, text)

        spy = SimpleNamespace(
            normalize=normalize,
            is_normalized=unicodedata.is_normalized,
            category=unicodedata.category,
        )
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("router.redaction.normalize.unicodedata", spy)
            mp.setattr("router.redaction.normalize.time", SimpleNamespace(monotonic=lambda: 9.0))
            with pytest.raises(DetectionError, match="deadline"):
                normalize_mapped("a\ufdfa" * 20_000, deadline=1.0)
        assert longest[0] < 100

    def test_no_deadline_normalises_as_before(self) -> None:
        """Without a deadline the text is normalised whole."""
        assert normalize_mapped("\ufdfa" * 3).text == unicodedata.normalize("NFKC", "\ufdfa" * 3)
