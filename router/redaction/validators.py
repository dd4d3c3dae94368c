"""Checks that turn a pattern match into a finding: checksums, issuer ranges, numbering rules.

Pure functions over the candidate text, each a few microseconds. They are what keeps precision
high on near-misses (an order number, a Luhn-invalid card, an IBAN with a wrong check digit).
National identifiers use python-stdnum's validators.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import ipaddress
from collections.abc import Callable
from functools import lru_cache

from stdnum import iban as _iban
from stdnum.br import cpf as _br_cpf
from stdnum.ch import ssn as _ch_ssn
from stdnum.de import idnr as _de_idnr
from stdnum.es import dni as _es_dni
from stdnum.es import nie as _es_nie
from stdnum.fi import hetu as _fi_hetu
from stdnum.fr import nir as _fr_nir
from stdnum.in_ import aadhaar as _in_aadhaar
from stdnum.it import codicefiscale as _it_codicefiscale
from stdnum.nl import bsn as _nl_bsn
from stdnum.no import fodselsnummer as _no_fodselsnummer
from stdnum.pl import pesel as _pl_pesel
from stdnum.se import personnummer as _se_personnummer

# ---------------------------------------------------------------- payment cards


def luhn(digits: str) -> bool:
    """The Luhn (mod 10) check over a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_ANY_LENGTH = frozenset(range(12, 20))
# (brand, issuer ranges as equal-width (low, high) prefixes, allowed lengths)
CARD_BRANDS: tuple[tuple[str, tuple[tuple[str, str], ...], frozenset[int]], ...] = (
    ("visa", (("4", "4"),), frozenset({13, 16, 19})),
    ("mastercard", (("51", "55"), ("2221", "2720")), frozenset({16})),
    ("amex", (("34", "34"), ("37", "37")), frozenset({15})),
    ("discover", (("6011", "6011"), ("644", "649"), ("65", "65")), frozenset(range(16, 20))),
    # JCB is registered for 3528-3589; validators (and test generators) take all of 35.
    ("jcb", (("35", "35"),), frozenset(range(16, 20))),
    ("jcb15", (("1800", "1800"), ("2131", "2131")), frozenset({15})),
    ("diners", (("300", "305"), ("3095", "3095"), ("36", "36"), ("38", "39")), _ANY_LENGTH),
    ("unionpay", (("62", "62"), ("81", "81")), frozenset(range(16, 20))),
    ("mir", (("2200", "2204"),), frozenset(range(16, 20))),
    ("rupay", (("508", "508"), ("60", "60"), ("82", "82")), frozenset({16})),
    ("troy", (("9792", "9792"),), frozenset({16})),
    # Maestro's wide historic ranges; 0604 is listed in several public IIN tables (and Faker's).
    ("maestro", (("50", "50"), ("56", "69"), ("0604", "0604")), _ANY_LENGTH),
)


_RANGES_BY_LENGTH = {
    n: tuple((brand, low, high) for brand, ranges, lengths in CARD_BRANDS if n in lengths
             for low, high in ranges)
    for n in range(12, 20)
}  # fmt: skip


def card_brand(digits: str) -> str | None:
    """The brand whose issuer range and length fit ``digits`` (Luhn not checked), if any."""
    return _brand(len(digits), digits[:_HEAD])


# Issuer ranges are short prefixes, so the brand depends on the length and the first _HEAD (4)
# characters alone: remembered, a tensor of timestamps (one length, a few heads) costs a dict
# lookup per number instead of a walk over the ranges.
_HEAD = max(len(low) for _, ranges, _ in CARD_BRANDS for low, _ in ranges)


@lru_cache(maxsize=8192)
def _brand(length: int, head: str) -> str | None:
    for brand, low, high in _RANGES_BY_LENGTH.get(length, ()):
        if low <= head[: len(low)] <= high:
            return brand
    return None


def is_card(digits: str) -> bool:
    """A payment card number: known issuer range and length, and a valid Luhn check digit."""
    return digits.isascii() and digits.isdigit() and card_brand(digits) is not None and luhn(digits)


# ---------------------------------------------------------------- IBAN

# Total IBAN length per country (SWIFT registry, as in python-stdnum's iban.dat).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30, "SO": 23,
}  # fmt: skip


def is_iban(value: str) -> bool:
    """An IBAN (separators allowed): country length and BBAN structure, and the mod-97
    check.

    National check digits inside the BBAN are not checked: the IBAN standard does not require
    them and generated test data rarely has them right."""
    compact = "".join(ch for ch in value if ch.isalnum()).upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    return _iban.is_valid(compact, check_country=False)


# ---------------------------------------------------------------- US SSN

_SSN_NEVER_ISSUED = frozenset({"078051120", "219099999", "123456789"})


def is_us_ssn(value: str) -> bool:
    """A US SSN in its issued range: area not 000, 666 or 9xx; group not 00; serial not 0000."""
    digits = value.replace("-", "").replace(" ", "").replace(".", "")
    if len(digits) != 9 or not digits.isascii() or not digits.isdigit():
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return (
        area not in ("000", "666")
        and area[0] != "9"
        and group != "00"
        and serial != "0000"
        and digits not in _SSN_NEVER_ISSUED
    )


# ---------------------------------------------------------------- network


def is_ip(value: str) -> bool:
    """An IPv4 or IPv6 address (an IPv6 zone suffix such as ``%eth0`` is allowed)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- phone numbers

_CC_2 = frozenset(
    map(str, (20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53,
              54, 55, 56, 57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94,
              95, 98))
)  # fmt: skip
# ITU zones where every calling code has three digits.
_CC_3_ZONES = frozenset(
    map(str, (21, 22, 23, 24, 25, 26, 29, 35, 37, 38, 42, 50, 59, 67, 68, 69, 80, 85, 87, 88, 96,
              97, 99))
)  # fmt: skip


def calling_code_length(digits: str) -> int:
    """Length of the ITU country calling code that ``digits`` start with, or 0 if none does."""
    if digits[:1] in ("1", "7"):
        return 1
    if digits[:2] in _CC_2:
        return 2
    if digits[:2] in _CC_3_ZONES and len(digits) >= 3:
        return 3
    return 0


# ---------------------------------------------------------------- dates

MONTHS = {
    name: number
    for number, names in enumerate(
        (
            "jan january januar janvier enero gennaio januari styczeń stycznia",
            "feb february februar février fevrier febrero febbraio februari luty lutego",
            "mar march märz maerz mars marzo maart marzec marca",
            "apr april avril abril aprile kwiecień kwietnia",
            "may mai mayo maggio mei maj maja",
            "jun june juni juin junio giugno czerwiec czerwca",
            "jul july juli juillet julio luglio lipiec lipca",
            "aug august août aout agosto augustus sierpień sierpnia",
            "sep sept september septembre septiembre settembre wrzesień września",
            "oct october oktober octobre octubre ottobre październik października",
            "nov november novembre noviembre listopad listopada",
            "dec december dezember décembre decembre diciembre dicembre grudzień grudnia",
        ),
        start=1,
    )
    for name in names.split()
}


def is_date(year: int, month: int, day: int) -> bool:
    """A real calendar date in a plausible range for a birth date (1900-2099)."""
    if not (1900 <= year <= 2099 and 1 <= month <= 12):
        return False
    return 1 <= day <= calendar.monthrange(year, month)[1]


def full_year(year: int) -> int:
    """Two-digit years as in birth dates: 00-29 -> 2000s, 30-99 -> 1900s."""
    if year >= 100:
        return year
    return 2000 + year if year < 30 else 1900 + year


# ---------------------------------------------------------------- secrets

AWS_KEY_PREFIXES = (
    "AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "ANPA", "ANVA", "AROA", "APKA", "ASCA",
)  # fmt: skip
_BASE32 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


def is_aws_key_id(value: str) -> bool:
    """An AWS access key id: a known 4-letter type prefix and 16 base32 characters."""
    return len(value) == 20 and value[:4] in AWS_KEY_PREFIXES and set(value[4:]) <= _BASE32


def is_jwt(value: str) -> bool:
    """A JWS compact token whose header decodes (base64url) to a JSON object."""
    header = value.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
    except (binascii.Error, ValueError):
        return False
    return decoded.startswith(b"{") and decoded.rstrip().endswith(b"}")


# ---------------------------------------------------------------- national identifiers

_GB_NINO_BAD_FIRST = frozenset("DFIQUV")
_GB_NINO_BAD_SECOND = frozenset("DFIOQUV")
_GB_NINO_BAD_PREFIX = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def is_gb_nino(value: str) -> bool:
    """A UK National Insurance number: allowed prefix letters, six digits, suffix A-D."""
    v = value.replace(" ", "").upper()
    return (
        len(v) == 9
        and v[:2].isalpha()
        and v[2:8].isdigit()
        and v[8] in "ABCD"
        and v[0] not in _GB_NINO_BAD_FIRST
        and v[1] not in _GB_NINO_BAD_SECOND
        and v[:2] not in _GB_NINO_BAD_PREFIX
    )


def _stdnum(module_is_valid: Callable[[str], bool]) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        return value.isascii() and module_is_valid(value.upper())

    return check


# kind -> validator. The formats whose digits carry a strong check (or a specific shape) are
# detected anywhere; the weak ones (plain digits, one mod-11/Verhoeff digit) need a context word.
NATIONAL_IDS: dict[str, Callable[[str], bool]] = {
    "es.dni": _stdnum(_es_dni.is_valid),
    "es.nie": _stdnum(_es_nie.is_valid),
    "it.codicefiscale": _stdnum(_it_codicefiscale.is_valid),
    "fr.nir": _stdnum(_fr_nir.is_valid),
    "se.personnummer": _stdnum(_se_personnummer.is_valid),
    "fi.hetu": _stdnum(_fi_hetu.is_valid),
    "ch.ssn": _stdnum(_ch_ssn.is_valid),
    "br.cpf": _stdnum(_br_cpf.is_valid),
    "gb.nino": is_gb_nino,
    "pl.pesel": _stdnum(_pl_pesel.is_valid),
    "nl.bsn": _stdnum(_nl_bsn.is_valid),
    "de.idnr": _stdnum(_de_idnr.is_valid),
    "in.aadhaar": _stdnum(_in_aadhaar.is_valid),
    "no.fodselsnummer": _stdnum(_no_fodselsnummer.is_valid),
}
