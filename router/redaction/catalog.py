"""The built-in detectors: one entry per entity type and format, with the context words,
validators and ranks that keep precision (measured by bench/redaction_eval.py)."""

from __future__ import annotations

from functools import partial

from router.redaction import validators as v
from router.redaction.actions import PSEUDONYM_CHARS
from router.redaction.patterns import Detector, Pattern
from router.redaction.refiners import (
    after_digit_group,
    after_word,
    card_refine,
    iban_refine,
    ipv6_ok,
    is_birth_date,
    phone_refine,
)
from router.redaction.types import Entity
from router.redaction.vault import entity_label

# ---------------------------------------------------------------------------- building

_MONTH_NAMES = "|".join(sorted(v.MONTHS, key=len, reverse=True))
_DATE = (
    r"\d{4}[-./]\d{1,2}[-./]\d{1,2}"
    r"|\d{1,2}[-./]\d{1,2}[-./](?:\d{4}|\d{2})"
    rf"|\d{{1,2}}(?:st|nd|rd|th|er|\.)?\s(?:of\s|de\s)?(?:{_MONTH_NAMES})\.?,?\s\d{{4}}"
    rf"|(?:{_MONTH_NAMES})\.?\s\d{{1,2}}(?:st|nd|rd|th)?,?\s\d{{4}}"
)
_DOB_WORDS = (
    r"born|dob|d\.o\.b|date[ _-]?of[ _-]?birth|birth[ _-]?date|birthday|geboren|geburtsdatum"
    r"|geb\.|n[ée]e?\s(?:le|el)|fecha[ _-]de[ _-]nacimiento|nacid[oa]|data[ _-]di[ _-]nascita"
    r"|date[ _-]de[ _-]naissance|geboortedatum|urodzon[ya]"
)


def _p(source: str, group: int | str = 1) -> Pattern:
    return Pattern(source, value_group=group)


# Boundaries: no lookaround in RE2, so the pattern consumes the character before a value; the
# scan resumes at the value's end, so the character after it stays free for the next match.
_B = r"(?:^|[^\w])"
_E = r"(?:$|[^\w])"
# After a number: not a word character nor a separator that continues it, except sentence-final
# punctuation ("call 555-123-4567.").
_END_PUNCT = r"(?:$|[^\w./-]|[./-](?:$|[^\w]))"


_AT = r" ?(?:\[ ?(?i:at) ?\]|\( ?(?i:at) ?\)|\{ ?(?i:at) ?\}) ?"
_DOT = r" ?(?:\[ ?(?i:dot) ?\]|\( ?(?i:dot) ?\)|\{ ?(?i:dot) ?\}) ?"
# "+": a space in a form-encoded query (a URL in a message: ?card=4111+1111+1111+1111).
_CARD_SEP = r"(?:[ \t]{1,2}|[ \t]?[-./+][ \t]?|[ \t]?\r?\n)"

_PHONE_WORDS = ("phone", "tel", "mobile", "cell", "call", "fax", "whatsapp", "sms", "contact",
                "handy", "móvil", "movil", "cellulare", "telefon", "téléphone", "portable",
                "numer", "nummer")  # fmt: skip


def _phone(kind: str, pattern: str, context: tuple[str, ...] = ()) -> Detector:
    return Detector(
        Entity.PHONE,
        _p(pattern),
        refine=partial(phone_refine, lenient=bool(context)),
        veto=after_digit_group,
        context=context,
        window=32,
        rank=50,
        name=f"PHONE/{kind}",
    )


def _national(kind: str, pattern: str, context: tuple[str, ...] = ()) -> Detector:
    check = v.NATIONAL_IDS[kind]
    return Detector(
        Entity.NATIONAL_ID,
        _p(pattern),
        validator=lambda value: check(value.replace(" ", "")),
        context=context,
        rank=9 if context else 13,  # its name next to it: more specific than any other reading
        name=f"NATIONAL_ID/{kind}",
    )


def _pseudonym(entity: Entity) -> Detector:
    """A pseudonym a nearer router's `hash` made (`<EMAIL#kdpfaoijcmbe>`) names a value of its
    entity: through a chain of routers, a farther tier's stricter action (tokenize, drop) must
    still reach it, or central would get regional's linkable pseudonyms instead of tokens."""
    label = entity_label(entity)
    return Detector(
        entity, _p(rf"(<{label}#[a-p]{{{PSEUDONYM_CHARS}}}>)"), rank=5, name=f"{label}/pseudonym"
    )


def builtin() -> tuple[Detector, ...]:
    return (
        *(_pseudonym(entity) for entity in Entity),
        Detector(
            Entity.EMAIL,
            _p(
                # An apostrophe inside the local part (o'brien@...), never at its edges: a
                # quote around an address is not part of it.
                # Marks (\p{M}) belong to their letters: Devanagari's vowel signs, say.
                r"([\p{L}\p{M}\p{N}_%+-]+(?:['.][\p{L}\p{M}\p{N}_%+-]+)*@"
                r"(?:[\p{L}\p{N}](?:[\p{L}\p{M}\p{N}-]*[\p{L}\p{M}\p{N}])?\.)+"
                r"(?:\p{L}[\p{L}\p{M}\p{N}-]*[\p{L}\p{M}\p{N}]|xn--[a-zA-Z0-9-]+))"
            ),
            rank=30,
            name="EMAIL",
        ),
        Detector(
            Entity.EMAIL,
            # Written to dodge scrapers: "john [at] example [dot] com", "john(at)example.com".
            _p(
                r"([\p{L}\p{M}\p{N}_%+-]+(?:\.[\p{L}\p{M}\p{N}_%+-]+)*" + _AT + r"(?:[\p{L}\p{N}]"
                r"(?:[\p{L}\p{M}\p{N}-]*[\p{L}\p{M}\p{N}])?(?:\." + "|" + _DOT + r"))+"
                r"\p{L}[\p{L}\p{M}\p{N}-]*[\p{L}\p{M}\p{N}])"
            ),
            rank=30,
            name="EMAIL/spelled",
        ),
        Detector(
            Entity.CARD,
            # Groups as people write them: spaces, dashes, dots or slashes (or a query's
            # '+'), or a group per line or per table cell; card_refine keeps one separator
            # per number.
            _p(r"(?:^|[^\w])(\d{4,19}(?:" + _CARD_SEP + r"\d{1,19})*)(?:$|[^\w])"),
            refine=card_refine,
            rank=10,
            name="CARD",
        ),
        Detector(
            Entity.IBAN,
            _p(
                r"(?:^|[^\w])((?i:[a-z]{2})\d{2}"
                r"(?:(?:[ \t]{1,2}|[ \t]?\r?\n|[-.+])?[A-Za-z0-9]){10,30})"
            ),
            validator=v.is_iban,
            refine=iban_refine,
            rank=11,
            resume_inside=True,
            name="IBAN",
        ),
        Detector(
            Entity.US_SSN,
            _p(r"(?:^|[^\w-])(\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4})(?:$|[^\w-])"),
            validator=v.is_us_ssn,
            rank=12,
            name="US_SSN",
        ),
        Detector(
            Entity.US_SSN,
            # Dotted as forms and Presidio allow, but not inside a longer dotted run (a version).
            _p(r"(?:^|[^\w./-])(\d{3}\.\d{2}\.\d{4})" + _END_PUNCT),
            validator=v.is_us_ssn,
            rank=12,
            name="US_SSN/dotted",
        ),
        Detector(
            Entity.US_SSN,
            _p(r"(?:^|[^\w-])(\d{9})(?:$|[^\w-])"),
            validator=v.is_us_ssn,
            context=("ssn", "social security", "soc. sec", "soc sec"),
            rank=12,
            name="US_SSN/context",
        ),
        Detector(
            Entity.IP_ADDRESS,
            _p(
                r"(?:^|[^\w.])((?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                r"(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3})(?:$|[^\w.]|\.(?:$|[^\w]))"
            ),
            validator=v.is_ip,
            veto=after_word("version", "ver", "ver.", "release", "build", "v", "v."),
            rank=31,
            name="IP_ADDRESS/v4",
        ),
        Detector(
            Entity.IP_ADDRESS,
            _p(
                r"(?:^|[^\w:.])((?:[0-9A-Fa-f]{0,4}:){2,7}"
                r"(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?:%[0-9A-Za-z]+)?)(?:$|[^\w:.])"
            ),
            validator=ipv6_ok,
            rank=31,
            name="IP_ADDRESS/v6",
        ),
        Detector(
            Entity.AWS_KEY,
            _p(
                r"(?:^|[^A-Za-z0-9])((?:" + "|".join(v.AWS_KEY_PREFIXES) + r")[A-Z2-7]{16})"
                r"(?:$|[^A-Za-z0-9])"
            ),
            validator=v.is_aws_key_id,
            rank=20,
            name="AWS_KEY/id",
        ),
        Detector(
            Entity.AWS_KEY,
            _p(
                r"(?i:aws)[\w .-]{0,24}?(?i:secret|private|key|token)[\w .-]{0,16}?[\"':= \t]{1,6}"
                r"([A-Za-z0-9/+=]{40})(?:$|[^A-Za-z0-9/+=])"
            ),
            rank=20,
            name="AWS_KEY/secret",
        ),
        Detector(
            Entity.GITHUB_TOKEN,
            _p(
                r"(?:^|[^A-Za-z0-9_])((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,}"
                r"|github_pat_[A-Za-z0-9_]{22,})(?:$|[^A-Za-z0-9_])"
            ),
            validator=lambda value: len(value) <= 255,
            rank=21,
            name="GITHUB_TOKEN",
        ),
        Detector(
            Entity.JWT,
            _p(
                r"(?:^|[^A-Za-z0-9_-])(eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)"
                r"(?:$|[^A-Za-z0-9_.-])"
            ),
            validator=v.is_jwt,
            rank=22,
            name="JWT",
        ),
        Detector(
            Entity.BEARER_TOKEN,
            _p(r"(?i:\bbearer)\s+([A-Za-z0-9._~+/-]{8,}=*)"),
            rank=23,
            name="BEARER_TOKEN",
        ),
        Detector(
            Entity.BEARER_TOKEN,
            _p(
                r"(?i:\b(?:access|id|refresh|auth|session)[_-]?token|\bapi[_-]?key)"
                r"[\"']?\s?[=:]\s?[\"']?([A-Za-z0-9._~+/-]{16,}=*)"
            ),
            rank=23,
            name="BEARER_TOKEN/parameter",
        ),
        Detector(
            Entity.DATE_OF_BIRTH,
            _p(rf"(?i)(?:{_DOB_WORDS})[^\d\n]{{0,24}}?({_DATE})(?:$|[^\w])"),
            validator=is_birth_date,
            rank=32,
            name="DATE_OF_BIRTH",
        ),
        # Phone numbers: international (+CC or 00CC), North American, national with a trunk 0
        # and separators; any other shape only next to a word such as "phone" or "call".
        _phone(
            "international",
            # '+' between groups: a space in a form-encoded query (?tel=%2B44+20+7946+0958).
            r"(?:^|[^\w+])((?:\+ ?|00)\d{1,3}(?:[ .+-]?\(\d{1,4}\))?(?:[ .\-/+]?\d{1,10}){1,6}"
            r"(?:\s?(?i:x|ext\.?|extension)\s?\d{1,6})?)(?:$|[^\w])",
        ),
        _phone(
            "nanp",
            r"(?:^|[^\w+./-])((?:1[ .-])?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-])\d{3}[ .-]\d{4}"
            r"(?:\s?(?i:x|ext\.?)\s?\d{1,6})?)" + _END_PUNCT,
        ),
        _phone(
            "trunk",
            r"(?:^|[^\w+./-])((?:\(0\d{1,4}\) ?|0\d{1,4}[ .\-/])\d{1,8}(?:[ .\-/]\d{1,8}){0,4})"
            + _END_PUNCT,
        ),
        _phone(
            "context",
            r"(?:^|[^\w+./-])(\(?\d[\d ()./-]{5,18}\d)" + _END_PUNCT,
            _PHONE_WORDS,
        ),
        # National identifiers: checksum plus a specific shape anywhere; plain digits only with
        # the identifier's name nearby.
        _national("es.dni", _B + r"(\d{8}-?[A-Za-z])" + _E),
        _national("es.nie", _B + r"([XYZxyz]-?\d{7}-?[A-Za-z])" + _E),
        _national(
            "it.codicefiscale",
            _B + r"([A-Z]{6}[0-9LMNPQRSTUV]{2}[A-EHLMPR-T][0-9LMNPQRSTUV]{2}[A-Z]"
            r"[0-9LMNPQRSTUV]{3}[A-Z])" + _E,
        ),
        _national("fr.nir", _B + r"([12] ?\d\d ?\d\d ?(?:\d\d|2[ABab]) ?\d{3} ?\d{3} ?\d\d)" + _E),
        _national("se.personnummer", _B + r"((?:\d{2})?\d{6}[-+]\d{4})" + r"(?:$|[^\w-])"),
        _national("fi.hetu", _B + r"(\d{6}[-+A-FU-Y]\d{3}[0-9A-Y])" + _E),
        _national("ch.ssn", _B + r"(756\.?\d{4}\.?\d{4}\.?\d{2})" + _E),
        _national("br.cpf", _B + r"(\d{3}\.\d{3}\.\d{3}-\d{2})" + _E),
        _national("gb.nino", _B + r"([A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D])" + _E),
        _national("pl.pesel", _B + r"(\d{11})" + _E, ("pesel",)),
        _national(
            "nl.bsn", _B + r"(\d{9}|\d{4}\.\d{2}\.\d{3})" + _E, ("bsn", "burgerservice", "sofi")
        ),
        _national(
            "de.idnr",
            _B + r"(\d{2} ?\d{3} ?\d{3} ?\d{3})" + _E,
            ("steuer", "idnr", "identifikationsnummer", "tin"),
        ),
        _national("in.aadhaar", _B + r"(\d{4} ?\d{4} ?\d{4})" + _E, ("aadhaar", "aadhar", "uidai")),
        _national(
            "no.fodselsnummer",
            _B + r"(\d{6} ?\d{5})" + _E,
            ("fødselsnummer", "fodselsnummer", "personnummer"),
        ),
        # Spans that look numeric but are not personal data; they suppress what overlaps them.
        Detector(
            "_UUID",
            _p(r"((?i)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"),
            rank=40,
            name="_UUID",
        ),
        Detector(
            "_TIMESTAMP",
            _p(
                r"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?"
                r"(?:Z|[+-]\d{2}:?\d{2})?)"
            ),
            rank=40,
            name="_TIMESTAMP",
        ),
    )
