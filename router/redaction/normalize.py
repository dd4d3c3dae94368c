"""Text normalisation before detection, so that encoded or disguised values are seen as plain.

One round applies, in order: removal of invisible characters (Unicode category Cf, such as
zero-width space and joiners, soft hyphen, BOM, bidi controls and tag characters, plus the few
default-ignorable characters outside Cf: variation selectors, combining grapheme joiner, Hangul
fillers); lone surrogates to U+FFFD (so the result always encodes as UTF-8); NFKC (full-width
digits and letters, ligatures, non-breaking spaces); other scripts' decimal digits and the
hyphen/dash/minus family (en and em dash too) folded to ASCII; percent-decoding of valid
``%XX`` runs (``+`` is left alone: it starts international phone numbers); HTML character
references that end in ``;``, and numeric ones without it (legacy named ones without it, such
as ``&copy`` in a query string, are left alone); backslash escapes as code and JSON write
them, which people also paste into prose (``john\\u0040example.com``): ``\\uXXXX`` (a
surrogate pair as one character, a lone surrogate left as written), ``\\u{X...}``, ``\\xXX``
for printable ASCII, and ``\\n``, ``\\t``, ``\\r`` (a pasted log's ``...\\n4111 1111...``:
the card must not look glued to the letter n).

Rounds repeat until nothing changes, which undoes double encoding (``%2540`` -> ``%40`` ->
``@``). Text still changing after ``MAX_ROUNDS`` rounds is nested deeper than any client
legitimately encodes and raises DetectionError: the caller fails closed. So the result is a fixed
point and ``normalize(normalize(x)) == normalize(x)``. Each round is a constant number of linear
passes, so the whole is linear in the input.

``normalize_mapped`` also returns how the result maps back to the input, so a finding in the
normalised text can be located in the original (``Normalized.to_original``): callers can then
redact the text they received and forward everything else byte for byte.
"""

from __future__ import annotations

import html
import re
import time
import unicodedata
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from router.redaction.types import DetectionError

MAX_ROUNDS = 4
# Characters of a non-ASCII run between two deadline checks: NFKC cluster by cluster costs
# ~1 us a character, and one run may be a whole string of millions.
_CHECK_EVERY = 4096

# Cf as of Unicode 15 (a unit test checks this covers the running Python's table), plus
# default-ignorable characters of other categories that render as nothing.
_INVISIBLE_RANGES = (
    "\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4\u17b5"
    "\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\u3164\ufe00-\ufe0f"
    "\ufeff\uffa0\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f\U000e0100-\U000e01ef"
)
_INVISIBLE = re.compile(f"[{_INVISIBLE_RANGES}]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Combining marks left on printable ASCII once NFKC composed what composes ("4\u20e3" keycaps,
# "b\u0336" strikethrough and "b\u0332" underline text generators, Zalgo): read past, so the
# digits and letters under them are found; marks on other scripts are their letters' own.
_MARKS_ON_ASCII = re.compile(
    "(?<=[\x20-\x7e])[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+"
)
_NON_ASCII = re.compile("[^\x00-\x7f]+")
_PERCENT_RUN = re.compile("(?:%[0-9A-Fa-f]{2})+")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
# A numeric reference may lack its ';' (a browser still shows the character: "&#64" and
# "&#x40" are '@', taking as many digits as follow, as here);
# named ones may not, so a query string's "&copy=2" stays as written.
_CHAR_REF = re.compile("&(?:#[0-9]{1,7};?|#[xX][0-9A-Fa-f]{1,6};?|[A-Za-z][A-Za-z0-9]{1,31};)")
_BACKSLASH_ESCAPE = re.compile(
    r"\\u[dD][89abAB][0-9A-Fa-f]{2}\\u[dD][c-fC-F][0-9A-Fa-f]{2}"  # a surrogate pair
    r"|\\u[0-9A-Fa-f]{4}|\\u\{[0-9A-Fa-f]{1,6}\}|\\x[2-7][0-9A-Fa-f]|\\[ntr]"
)
_WHITESPACE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
# Em dash and horizontal bar too: word processors turn a typed "-" or "--" into them.
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63"
# Characters that NFKC may compose with the character before them, beyond category M.
_EXTENDERS = frozenset(chr(c) for c in range(0x1160, 0x1200)) | {"\uff9e", "\uff9f"}

# One pass's changes: (out_start, out_end, in_start, in_end), sorted, non-overlapping.
Edit = tuple[int, int, int, int]


# The zero of every run of ten decimal digits (category Nd) outside ASCII, Unicode 15; a unit
# test checks the running Python's table maps no other Nd character.
_DIGIT_ZEROS = (
    0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6,
    0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50,
    0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650,
    0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0, 0x16B50,
    0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
)  # fmt: skip
# Decimal digits of every script to ASCII, and the hyphen family to '-' (all 1:1 mappings).
_FOLD = {zero + i: ord("0") + i for zero in _DIGIT_ZEROS for i in range(10)} | {
    ord(d): ord("-") for d in _DASHES
}


@dataclass(frozen=True, slots=True)
class Normalized:
    """A normalised text and the edits that produced it (empty when nothing changed)."""

    text: str
    passes: tuple[tuple[Edit, ...], ...] = ()

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map a span of ``text`` to the smallest span of the input that produced it."""
        for edits in reversed(self.passes):
            start, end = _map_start(edits, start), _map_end(edits, end)
            end = max(start, end)  # an empty span at a deletion
        return start, end


def _map_start(edits: tuple[Edit, ...], pos: int) -> int:
    i = bisect_right(edits, pos, key=lambda e: e[0]) - 1
    if i < 0:
        return pos
    _, out_end, in_start, in_end = edits[i]
    return in_start if pos < out_end else in_end + (pos - out_end)


def _map_end(edits: tuple[Edit, ...], pos: int) -> int:
    i = bisect_left(edits, pos, key=lambda e: e[0]) - 1
    if i < 0:
        return pos
    _, out_end, _, in_end = edits[i]
    return in_end if pos <= out_end else in_end + (pos - out_end)


class _Builder:
    """Accumulates one pass's output pieces and its edits."""

    __slots__ = ("edits", "in_pos", "out_len", "parts", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.parts: list[str] = []
        self.edits: list[Edit] = []
        self.in_pos = 0
        self.out_len = 0

    def replace(self, start: int, end: int, new: str) -> None:
        if start > self.in_pos:
            self.parts.append(self.source[self.in_pos : start])
            self.out_len += start - self.in_pos
        out_start = self.out_len
        self.parts.append(new)
        self.out_len += len(new)
        last = self.edits[-1] if self.edits else None
        if last is not None and last[3] == start and last[1] == out_start:
            self.edits[-1] = (last[0], self.out_len, last[2], end)
        else:
            self.edits.append((out_start, self.out_len, start, end))
        self.in_pos = end

    def finish(self) -> tuple[str, tuple[Edit, ...]]:
        if not self.edits:
            return self.source, ()
        self.parts.append(self.source[self.in_pos :])
        return "".join(self.parts), tuple(self.edits)


def _drop_invisible(text: str) -> tuple[str, tuple[Edit, ...]]:
    out = _Builder(text)
    for m in _INVISIBLE.finditer(text):
        out.replace(m.start(), m.end(), "")
    return out.finish()


def _drop_marks_on_ascii(text: str) -> tuple[str, tuple[Edit, ...]]:
    out = _Builder(text)
    for m in _MARKS_ON_ASCII.finditer(text):
        out.replace(m.start(), m.end(), "")
    return out.finish()


def _is_extender(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "M" or ch in _EXTENDERS


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DetectionError("detection deadline passed")


def _nfkc_run(out: _Builder, text: str, start: int, end: int, deadline: float | None) -> None:
    """NFKC one non-ASCII run, with one edit per changed cluster (base + combining marks)."""
    run = text[start:end]
    if unicodedata.is_normalized("NFKC", run):
        return
    clusters: list[tuple[int, int]] = []
    for i in range(start, end):
        if (i - start) % _CHECK_EVERY == _CHECK_EVERY - 1:
            _check_deadline(deadline)
        if clusters and _is_extender(text[i]):
            clusters[-1] = (clusters[-1][0], i + 1)
        else:
            clusters.append((i, i + 1))
    # Piece by piece first, timed: NFKC of a whole run is one uninterruptible call whose cost
    # follows its output (a run of U+FDFA grows 18-fold), so it comes once the pieces did.
    pieces: list[str] = []
    for k, (a, b) in enumerate(clusters):
        if k % _CHECK_EVERY == _CHECK_EVERY - 1:
            _check_deadline(deadline)
        pieces.append(unicodedata.normalize("NFKC", text[a:b]))
    _check_deadline(deadline)
    whole = unicodedata.normalize("NFKC", run)
    if "".join(pieces) != whole:  # composition across clusters (e.g. Hangul): edit the run
        out.replace(start, end, whole)
        return
    for (a, b), piece in zip(clusters, pieces, strict=True):
        if piece != text[a:b]:
            out.replace(a, b, piece)


def _nfkc(text: str, deadline: float | None) -> tuple[str, tuple[Edit, ...]]:
    if unicodedata.is_normalized("NFKC", text):
        return text, ()
    out = _Builder(text)
    for m in _NON_ASCII.finditer(text):
        start = m.start()
        # A combining mark after an ASCII letter composes with it ("e" + U+0301): take the letter.
        if start > 0 and _is_extender(text[start]):
            start -= 1
        _nfkc_run(out, text, start, m.end(), deadline)
    result, edits = out.finish()
    if result != unicodedata.normalize("NFKC", text):  # guard: never trust the split blindly
        return unicodedata.normalize("NFKC", text), ((0, len(result), 0, len(text)),)
    return result, edits


def _percent_decode(text: str, deadline: float | None) -> tuple[str, tuple[Edit, ...]]:
    out = _Builder(text)
    for k, m in enumerate(_PERCENT_RUN.finditer(text)):
        if k % _CHECK_EVERY == _CHECK_EVERY - 1:
            _check_deadline(deadline)
        raw = bytes.fromhex(m.group().replace("%", ""))
        decoded = raw.decode("utf-8", "surrogateescape")
        # Bytes that are not UTF-8 stay percent-encoded, exactly as they were written.
        decoded = _ESCAPED_BYTE.sub(lambda b: f"%{ord(b.group()) - 0xDC00:02X}", decoded)
        if decoded != m.group():
            out.replace(m.start(), m.end(), decoded)
    return out.finish()


def _unescape_html(text: str, deadline: float | None) -> tuple[str, tuple[Edit, ...]]:
    out = _Builder(text)
    for k, m in enumerate(_CHAR_REF.finditer(text)):
        if k % _CHECK_EVERY == _CHECK_EVERY - 1:
            _check_deadline(deadline)
        decoded = html.unescape(m.group())
        if decoded != m.group():
            out.replace(m.start(), m.end(), decoded)
    return out.finish()


def _escaped(escape: str) -> str:
    """The character a backslash escape stands for, or the escape itself if it is none."""
    if len(escape) == 2:
        return _WHITESPACE_ESCAPES[escape[1]]
    if escape[1] == "x":
        code = int(escape[2:], 16)
        return chr(code) if code < 0x7F else escape
    if escape[2] == "{":  # JavaScript's, Rust's and Swift's \u{40}
        code = int(escape[3:-1], 16)
        return chr(code) if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else escape
    code = int(escape[2:6], 16)
    if len(escape) == 12:  # a surrogate pair: one character beyond the BMP
        return chr(0x10000 + ((code - 0xD800) << 10) + int(escape[8:], 16) - 0xDC00)
    return escape if 0xD800 <= code <= 0xDFFF else chr(code)


def _unescape_backslash(text: str, deadline: float | None) -> tuple[str, tuple[Edit, ...]]:
    out = _Builder(text)
    for k, m in enumerate(_BACKSLASH_ESCAPE.finditer(text)):
        if k % _CHECK_EVERY == _CHECK_EVERY - 1:
            _check_deadline(deadline)
        decoded = _escaped(m.group())
        if decoded != m.group():
            out.replace(m.start(), m.end(), decoded)
    return out.finish()


def _round(text: str, passes: list[tuple[Edit, ...]], deadline: float | None = None) -> str:
    if not text.isascii():
        text, edits = _drop_invisible(text)
        if edits:
            passes.append(edits)
        text = _SURROGATE.sub("\ufffd", text)  # 1:1, so no edit to record
        text, edits = _nfkc(text, deadline)
        if edits:
            passes.append(edits)
        text, edits = _drop_marks_on_ascii(text)
        if edits:
            passes.append(edits)
        text = text.translate(_FOLD)  # 1:1 as well
    _check_deadline(deadline)
    if "%" in text:
        text, edits = _percent_decode(text, deadline)
        if edits:
            passes.append(edits)
    if "&" in text:
        text, edits = _unescape_html(text, deadline)
        if edits:
            passes.append(edits)
    if "\\" in text:
        text, edits = _unescape_backslash(text, deadline)
        if edits:
            passes.append(edits)
    return text


def normalize_mapped(text: str, deadline: float | None = None) -> Normalized:
    """Normalise ``text`` and keep the edits that map the result back to it (DetectionError
    once ``deadline``, a ``time.monotonic()`` instant, has passed)."""
    if text.isascii() and "%" not in text and "&" not in text and "\\" not in text:
        return Normalized(text)
    passes: list[tuple[Edit, ...]] = []
    current = text
    for _ in range(MAX_ROUNDS):
        following = _round(current, passes, deadline)
        if following == current:
            return Normalized(current, tuple(passes))
        current = following
    if _round(current, []) != current:
        raise DetectionError(f"text is encoded more than {MAX_ROUNDS} levels deep")
    return Normalized(current, tuple(passes))


def normalize(text: str) -> str:
    """The normalised form of ``text`` that detectors scan (see the module docstring)."""
    return normalize_mapped(text).text
