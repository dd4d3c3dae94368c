"""Sensitive-data detection: our detectors against Presidio (regex-only) on one synthetic set.

  /work/venv/bin/python bench/redaction_eval.py [--records 6000] [--seed 7] [--skip-presidio]

Builds a seeded synthetic set (Faker values, checksums right) of records in five template
families (prose, JSON bodies, query strings, headers, and CSV rows whose column names are out of
any context window), plus checksum-invalid near-misses and
evasions (zero-width characters, soft hyphens, full-width digits, percent and HTML encoding,
base64); runs our detectors (``Detectors.locate``: offsets in the text as sent) and Presidio's
predefined recognizers without an NLP model side by side; prints per-entity recall, precision
and F2, recall per template family, near-miss false positives, evasion recall, and times:
microseconds per typical 1 KB chat body (ours) and the worst case on adversarial inputs of
1 KB, 16 KB and the 1 MB cap for both (Presidio in a child process killed after --timeout s).

Scoring: a gold value counts as found when findings of its type cover all its characters (a
partial cover leaks the rest). A finding is a false positive when it overlaps no gold value of
its type. Presidio's types are mapped onto ours (DATE_TIME -> DATE_OF_BIRTH, its national ids
-> NATIONAL_ID); its other types (URL, ...) are ignored. Deterministic for a given seed and
Faker version; exit code 0 whether or not targets are met (the verdicts are printed).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import multiprocessing as mp
import os
import random
import statistics
import string
import sys
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faker import Faker
from stdnum import verhoeff

from router.redaction.detectors import Detectors
from router.redaction.types import DetectionError

ENTITIES = (
    "EMAIL", "PHONE", "CARD", "IBAN", "US_SSN", "IP_ADDRESS", "NATIONAL_ID", "AWS_KEY",
    "GITHUB_TOKEN", "JWT", "BEARER_TOKEN", "DATE_OF_BIRTH",
)  # fmt: skip
CHECKSUM_ENTITIES = ("CARD", "IBAN", "US_SSN")
PRESIDIO_MAP = {
    "EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "CREDIT_CARD": "CARD",
    "IBAN_CODE": "IBAN", "US_SSN": "US_SSN", "IP_ADDRESS": "IP_ADDRESS",
    "DATE_TIME": "DATE_OF_BIRTH", "UK_NHS": "NATIONAL_ID", "UK_NINO": "NATIONAL_ID",
    "ES_NIF": "NATIONAL_ID", "ES_NIE": "NATIONAL_ID", "IT_FISCAL_CODE": "NATIONAL_ID",
    "PL_PESEL": "NATIONAL_ID", "IN_AADHAAR": "NATIONAL_ID", "FI_PERSONAL_IDENTITY_CODE":
    "NATIONAL_ID", "SG_NRIC_FIN": "NATIONAL_ID", "AU_TFN": "NATIONAL_ID", "US_ITIN": "NATIONAL_ID",
}  # fmt: skip
LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL")


# ------------------------------------------------------------------------------ values


class Values:
    """Seeded generators of one entity value each (checksums valid)."""

    def __init__(self, seed: int) -> None:
        Faker.seed(seed)
        self.rng = random.Random(seed)
        self.fake = {loc: Faker(loc) for loc in (*LOCALES, "sv_SE")}
        self.en = self.fake["en_US"]

    def pick(self, seq: Any) -> Any:
        return self.rng.choice(seq)

    def locale(self) -> Faker:
        return self.fake[self.pick(LOCALES)]

    def email(self) -> str:
        return self.locale().email()

    def phone(self) -> str:
        return self.locale().phone_number()

    def card(self) -> str:
        kind = self.pick(("visa13", "visa16", "visa19", "mastercard", "amex", "discover",
                          "jcb15", "jcb16", "maestro", "diners"))  # fmt: skip
        number = self.en.credit_card_number(kind)
        style = self.rng.random()
        if style < 0.5:
            return number
        sep = " " if style < 0.85 else "-"
        if len(number) == 15 and number[:2] in ("34", "37"):
            parts = [number[:4], number[4:10], number[10:]]
        else:
            parts = [number[i : i + 4] for i in range(0, len(number), 4)]
        return sep.join(parts)

    def iban(self) -> str:
        value = self.locale().iban()
        if self.rng.random() < 0.4:
            return " ".join(value[i : i + 4] for i in range(0, len(value), 4))
        return value

    def ssn(self) -> str:
        return self.en.ssn()

    def ip(self) -> str:
        r = self.rng.random()
        if r < 0.45:
            return self.en.ipv4_public()
        if r < 0.75:
            return self.en.ipv4_private()
        return self.en.ipv6()

    def national_id(self) -> tuple[str, str]:
        """(value, kind): the kind picks a context word for the ids that need one."""
        kind = self.pick(("es.dni", "es.nie", "fr.nir", "it.cf", "se.pn", "gb.nino", "nl.bsn",
                          "pl.pesel", "in.aadhaar"))  # fmt: skip
        if kind == "es.dni":
            return self.fake["es_ES"].nif(), kind
        if kind == "es.nie":
            return self.fake["es_ES"].nie(), kind
        if kind == "fr.nir":
            return self.fake["fr_FR"].ssn(), kind
        if kind == "it.cf":
            return self.fake["it_IT"].ssn(), kind
        if kind == "se.pn":
            return self.fake["sv_SE"].ssn(), kind
        if kind == "nl.bsn":
            return self.fake["nl_NL"].ssn(), kind
        if kind == "pl.pesel":
            return self.fake["pl_PL"].pesel(), kind
        if kind == "in.aadhaar":
            body = str(self.rng.randint(2, 9)) + "".join(self.rng.choices(string.digits, k=10))
            number = body + verhoeff.calc_check_digit(body)
            return (f"{number[:4]} {number[4:8]} {number[8:]}" if self.rng.random() < 0.5
                    else number), kind  # fmt: skip
        first = self.pick("ABCEGHJKLMNOPRSTWXYZ")
        second = self.pick("ABCEGHJKLMNPRSTWXYZ")
        while first + second in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"):
            second = self.pick("ABCEGHJKLMNPRSTWXYZ")
        digits = "".join(self.rng.choices(string.digits, k=6))
        return f"{first}{second} {digits[:2]} {digits[2:4]} {digits[4:]} {self.pick('ABCD')}", kind

    def aws_key(self) -> str:
        if self.rng.random() < 0.8:
            prefix = self.pick(("AKIA", "ASIA", "AIDA", "AROA"))
            return prefix + "".join(self.rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", k=16))
        return "".join(self.rng.choices(string.ascii_letters + string.digits + "/+", k=40))

    def github_token(self) -> str:
        alnum = string.ascii_letters + string.digits
        if self.rng.random() < 0.75:
            prefix = self.pick(("ghp_", "gho_", "ghs_", "ghu_"))
            return prefix + "".join(self.rng.choices(alnum, k=36))
        return ("github_pat_" + "".join(self.rng.choices(alnum, k=22)) + "_"
                + "".join(self.rng.choices(alnum, k=59)))  # fmt: skip

    def jwt(self) -> str:
        def part(obj: dict[str, Any]) -> str:
            raw = json.dumps(obj, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        header = part({"alg": self.pick(("HS256", "RS256", "ES256")), "typ": "JWT"})
        payload = part({"sub": self.en.uuid4(), "name": self.en.name(),
                        "iat": self.rng.randint(1_600_000_000, 1_800_000_000)})  # fmt: skip
        sig = base64.urlsafe_b64encode(self.rng.randbytes(32)).rstrip(b"=").decode()
        return f"{header}.{payload}.{sig}"

    def bearer(self) -> str:
        alphabet = string.ascii_letters + string.digits + "-._~"
        return "".join(self.rng.choices(alphabet, k=self.rng.randint(24, 48)))

    def dob(self) -> str:
        d = self.en.date_of_birth(minimum_age=18, maximum_age=90)
        fmt = self.pick(("%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%B %d, %Y", "%d %B %Y",
                         "%d %b %Y"))  # fmt: skip
        return d.strftime(fmt)


# ------------------------------------------------------------------------------ templates

# Context words per entity, as people and programs write them; "" = none at all.
PROSE = {
    "EMAIL": ["You can reach me at {v} any time.", "Send the invoice to {v} please.", "{v}",
              "cc {v} and the team"],
    "PHONE": ["Call me on {v} after 5pm.", "My phone number is {v}.", "Tel. {v}",
              "mobile: {v}", "Please contact {v} for details."],
    "CARD": ["My card number is {v}, expiry 09/27.", "charge {v} for the order", "{v}",
             "Use the Visa ending... actually the full number is {v}."],
    "IBAN": ["Please wire the money to {v} by Friday.", "IBAN: {v}", "account {v} (EUR)", "{v}"],
    "US_SSN": ["My SSN is {v}.", "social security number {v}", "{v} is my number for the form"],
    "IP_ADDRESS": ["The server at {v} keeps timing out.", "ssh into {v} and restart it",
                   "blocked IP {v}", "{v}"],
    "NATIONAL_ID": ["My {ctx} is {v}.", "{ctx}: {v}", "ID ({ctx}) {v}"],
    "AWS_KEY": ["here is the key {v} for the bucket", "aws_secret_access_key = {v}",
                "AWS key: {v}"],
    "GITHUB_TOKEN": ["use token {v} to push", "GITHUB_TOKEN={v}", "{v}"],
    "JWT": ["The token {v} expired.", "decode this: {v}", "{v}"],
    "BEARER_TOKEN": ["curl -H 'Authorization: Bearer {v}' https://api.internal/x",
                     "the header is Bearer {v}"],
    "DATE_OF_BIRTH": ["I was born on {v} in Lyon.", "DOB: {v}", "date of birth {v}",
                      "born {v}"],
}  # fmt: skip
JSON_KEYS = {
    "EMAIL": ["email", "contact", "to", "user"], "PHONE": ["phone", "tel", "mobile"],
    "CARD": ["card_number", "pan", "payment"], "IBAN": ["iban", "account"],
    "US_SSN": ["ssn", "tax_id"], "IP_ADDRESS": ["client_ip", "ip", "remote_addr"],
    "NATIONAL_ID": ["{ctx}", "national_id ({ctx})"], "AWS_KEY": ["aws_access_key_id",
    "aws_secret_access_key"], "GITHUB_TOKEN": ["token", "gh_token"], "JWT": ["id_token", "jwt"],
    "BEARER_TOKEN": ["authorization"], "DATE_OF_BIRTH": ["date_of_birth", "dob", "birthDate"],
}  # fmt: skip
HEADERS = {
    "EMAIL": "X-User-Email", "PHONE": "X-Contact-Phone", "CARD": "X-Card", "IBAN": "X-Account",
    "US_SSN": "X-SSN", "IP_ADDRESS": "X-Forwarded-For", "NATIONAL_ID": "X-{ctx}",
    "AWS_KEY": "X-Aws-Key", "GITHUB_TOKEN": "X-GitHub-Token", "JWT": "X-Id-Token",
    "BEARER_TOKEN": "Authorization", "DATE_OF_BIRTH": "X-DOB",
}  # fmt: skip
ID_WORDS = {"es.dni": "DNI", "es.nie": "NIE", "fr.nir": "NIR", "it.cf": "codice fiscale",
            "se.pn": "personnummer", "gb.nino": "NI number", "nl.bsn": "BSN",
            "pl.pesel": "PESEL", "in.aadhaar": "Aadhaar"}  # fmt: skip
FAMILIES = ("prose", "json", "query", "header", "csv")


@dataclass
class Record:
    text: str
    family: str
    gold: list[tuple[int, int, str]] = field(default_factory=list)
    near_miss: list[tuple[int, int, str]] = field(default_factory=list)


class Builder:
    """Accumulates text pieces and the spans of the values placed in it."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.spans: list[tuple[int, int, str]] = []

    def add(self, text: str, entity: str | None = None) -> None:
        if entity is not None:
            self.spans.append((self.size, self.size + len(text), entity))
        self.parts.append(text)
        self.size += len(text)

    def text(self) -> str:
        return "".join(self.parts)


def _value(values: Values, entity: str) -> tuple[str, str]:
    if entity == "NATIONAL_ID":
        value, kind = values.national_id()
        return value, ID_WORDS[kind]
    make: dict[str, Callable[[], str]] = {
        "EMAIL": values.email, "PHONE": values.phone, "CARD": values.card, "IBAN": values.iban,
        "US_SSN": values.ssn, "IP_ADDRESS": values.ip, "AWS_KEY": values.aws_key,
        "GITHUB_TOKEN": values.github_token, "JWT": values.jwt, "BEARER_TOKEN": values.bearer,
        "DATE_OF_BIRTH": values.dob,
    }  # fmt: skip
    return make[entity](), ""


def _aws_template(template: str, value: str) -> bool:
    """AWS secret keys (40 chars) only appear in templates that name them."""
    return len(value) != 40 or "secret" in template


def _prose(values: Values, b: Builder, entity: str, value: str, ctx: str) -> None:
    templates = [t for t in PROSE[entity] if entity != "AWS_KEY" or _aws_template(t, value)]
    template = values.pick(templates).replace("{ctx}", ctx)
    if entity == "AWS_KEY" and len(value) == 40:
        template = "aws_secret_access_key = {v}"
    before, after = template.split("{v}")
    b.add(before)
    b.add(value, entity)
    b.add(after)


def _json_field(values: Values, b: Builder, entity: str, value: str, ctx: str) -> None:
    key = values.pick(JSON_KEYS[entity]).replace("{ctx}", ctx)
    if entity == "AWS_KEY":
        key = "aws_secret_access_key" if len(value) == 40 else "aws_access_key_id"
    if entity == "BEARER_TOKEN":
        b.add(json.dumps(key) + ': "Bearer ')
        b.add(value, entity)
        b.add('"')
        return
    b.add(json.dumps(key) + ": " + '"')
    b.add(value, entity)  # generated values need no JSON escaping
    b.add('"')


def build(values: Values, n_records: int) -> list[Record]:
    """n_records records, evenly over the families, each with 1-3 values and filler text."""
    rng = values.rng
    records = []
    for i in range(n_records):
        family = FAMILIES[i % len(FAMILIES)]
        entities = [ENTITIES[(i // len(FAMILIES) + k * 5) % len(ENTITIES)]
                    for k in range(rng.randint(1, 3))]  # fmt: skip
        b = Builder()
        filler = values.en.sentence
        if family == "prose":
            for entity in entities:
                b.add(filler() + " ")
                _prose(values, b, entity, *_value(values, entity))
                b.add(" ")
            b.add(filler())
        elif family == "json":
            b.add('{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ')
            b.add(json.dumps(filler()) + "}], ")
            for k, entity in enumerate(entities):
                if k:
                    b.add(", ")
                _json_field(values, b, entity, *_value(values, entity))
            b.add(', "metadata": {"request_id": "' + values.en.uuid4() + '"}}')
        elif family == "query":
            b.add("/v1/lookup?session=" + values.en.uuid4()[:8])
            for entity in entities:
                value, ctx = _value(values, entity)
                key = values.pick(JSON_KEYS[entity]).replace("{ctx}", ctx)
                if entity == "BEARER_TOKEN":
                    key = "access_token"
                b.add("&" + urllib.parse.quote(key, safe="") + "=")
                b.add(urllib.parse.quote(value, safe=""), entity)
            b.add("&lang=en")
        elif family == "csv":
            # A table row: the column names are a line away, out of any context window.
            names = [values.pick(JSON_KEYS[e]).replace("{ctx}", "id") for e in entities]
            b.add("name," + ",".join(names) + ",notes\n" + values.en.name())
            for entity in entities:
                value, _ = _value(values, entity)
                quote = '"' if "," in value else ""
                b.add("," + quote)
                b.add(value, entity)
                b.add(quote)
            b.add("," + values.en.word() + "\n")
        else:
            b.add("Host: api.example.net\r\nAccept: application/json\r\n")
            for entity in entities:
                value, ctx = _value(values, entity)
                name = HEADERS[entity].replace("{ctx}", ctx.replace(" ", "-"))
                b.add(name + ": " + ("Bearer " if entity == "BEARER_TOKEN" else ""))
                b.add(value, entity)
                b.add("\r\n")
            b.add("User-Agent: client/1.4\r\n")
        records.append(Record(b.text(), family, b.spans))
    return records


# ------------------------------------------------------------------------------ near misses


def near_misses(values: Values, n: int) -> list[Record]:
    """Values one check away from real ones, and numbers that only look like them."""
    rng = values.rng

    def bad_card() -> str:
        number = values.en.credit_card_number()
        last = (int(number[-1]) + rng.randint(1, 9)) % 10
        return number[:-1] + str(last)

    def bad_iban() -> str:
        value = values.locale().iban()
        check = (int(value[2:4]) + rng.randint(1, 96)) % 97
        return value[:2] + f"{check:02d}" + value[4:]

    def bad_ssn() -> str:
        area = rng.choice(["000", "666", str(rng.randint(900, 999))])
        if rng.random() < 0.25:
            return f"{rng.randint(100, 665):03d}-00-{rng.randint(1, 9999):04d}"
        return f"{area}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"

    makers: dict[str, Callable[[], str]] = {
        "card (Luhn off by one)": bad_card,
        "IBAN (bad check digits)": bad_iban,
        "SSN (000/666/9xx area, 00 group)": bad_ssn,
        "UUID": lambda: values.en.uuid4(),
        "ISO timestamp": lambda: values.en.iso8601(),
        "epoch millis": lambda: str(rng.randint(1_500_000_000_000, 1_800_000_000_000)),
        "version string": lambda: "v" + ".".join(str(rng.randint(0, 20)) for _ in range(4)),
        "order number": lambda: rng.choice(["ORD-", "#", "order "])
        + str(rng.randint(10**7, 10**10)),
        "sha1 hash": lambda: values.en.sha1(),
        "price list": lambda: " ".join(f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}"
                                       for _ in range(4)),
    }  # fmt: skip
    records = []
    kinds = list(makers)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        before = values.en.sentence() + " Reference: "
        value = makers[kind]()
        text = before + value + ". " + values.en.sentence()
        records.append(
            Record(text, "near-miss", near_miss=[(len(before), len(before) + len(value), kind)])
        )
    return records


# ------------------------------------------------------------------------------ evasions

ZWSP, SHY = "\u200b", "\u00ad"


def _fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


EVASIONS: dict[str, Callable[[str], str]] = {
    "zero-width space": lambda s: ZWSP.join(s),
    "soft hyphens": lambda s: SHY.join(s[i : i + 3] for i in range(0, len(s), 3)),
    "full-width": _fullwidth,
    "percent-encoded": lambda s: "".join(f"%{b:02X}" for b in s.encode()),
    "double percent": lambda s: "".join(f"%25{b:02X}" for b in s.encode()),
    "HTML entities": lambda s: "".join(f"&#{ord(c)};" for c in s),
    "base64 (not normalisable)": lambda s: base64.b64encode(s.encode()).decode(),
}
EVASION_ENTITIES = ("EMAIL", "CARD", "IBAN", "US_SSN", "PHONE", "IP_ADDRESS")


def evasions(values: Values, per_cell: int) -> list[tuple[str, Record]]:
    out = []
    for name, transform in EVASIONS.items():
        for entity in EVASION_ENTITIES:
            for _ in range(per_cell):
                value, ctx = _value(values, entity)
                b = Builder()
                b.add(values.en.sentence() + " ")
                _prose(values, b, entity, transform(value), ctx)
                out.append((name, Record(b.text(), "evasion", b.spans)))
    return out


# ------------------------------------------------------------------------------ scoring

Spans = list[tuple[int, int, str]]


def ours(detectors: Detectors) -> Callable[[str], Spans]:
    def run(text: str) -> Spans:
        return [(f.start, f.end, str(f.entity)) for f in detectors.locate(text)]

    return run


def presidio_engine() -> Any:
    # The e-mail recognizer's tldextract would fetch the public suffix list from the network:
    # keep it on the snapshot shipped in the package.
    os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = ""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine

    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "noop"}])
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp)
    return AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])


def presidio(engine: Any) -> Callable[[str], Spans]:
    def run(text: str) -> Spans:
        results = engine.analyze(text, language="en")
        return [(r.start, r.end, PRESIDIO_MAP[r.entity_type]) for r in results
                if r.entity_type in PRESIDIO_MAP]  # fmt: skip

    return run


def covered(gold: tuple[int, int, str], found: Spans, any_type: bool = False) -> bool:
    start, end, entity = gold
    pieces = sorted(
        (s, e) for s, e, t in found if (any_type or t == entity) and s < end and e > start
    )
    pos = start
    for s, e in pieces:
        if s > pos:
            return False
        pos = max(pos, e)
    return pos >= end


@dataclass
class Score:
    tp: Counter[str] = field(default_factory=Counter)
    fn: Counter[str] = field(default_factory=Counter)
    pred_ok: Counter[str] = field(default_factory=Counter)
    fp: Counter[str] = field(default_factory=Counter)
    any_cover: Counter[str] = field(default_factory=Counter)
    family_tp: Counter[tuple[str, str]] = field(default_factory=Counter)
    family_n: Counter[tuple[str, str]] = field(default_factory=Counter)

    def recall(self, e: str) -> float:
        n = self.tp[e] + self.fn[e]
        return self.tp[e] / n if n else float("nan")

    def precision(self, e: str) -> float:
        n = self.pred_ok[e] + self.fp[e]
        return self.pred_ok[e] / n if n else float("nan")

    def f2(self, e: str) -> float:
        p, r = self.precision(e), self.recall(e)
        if p != p or r != r or p + r == 0:
            return float("nan") if p != p else 0.0
        return 5 * p * r / (4 * p + r)


def score(records: list[Record], run: Callable[[str], Spans]) -> tuple[Score, float]:
    s = Score()
    t0 = time.perf_counter()
    outputs = [run(r.text) for r in records]
    elapsed = time.perf_counter() - t0
    for rec, found in zip(records, outputs, strict=True):
        for g in rec.gold:
            ok = covered(g, found)
            s.tp[g[2]] += ok
            s.fn[g[2]] += not ok
            s.any_cover[g[2]] += covered(g, found, any_type=True)
            s.family_tp[(rec.family, g[2])] += ok
            s.family_n[(rec.family, g[2])] += 1
        for start, end, entity in found:
            if entity not in ENTITIES:
                continue
            hit = any(g[2] == entity and start < g[1] and end > g[0] for g in rec.gold)
            if hit:
                s.pred_ok[entity] += 1
            else:
                s.fp[entity] += 1
    return s, elapsed


def near_miss_rate(records: list[Record], run: Callable[[str], Spans]) -> dict[str, float]:
    flagged: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for rec in records:
        found = run(rec.text)
        for start, end, kind in rec.near_miss:
            total[kind] += 1
            flagged[kind] += any(s < end and e > start for s, e, _ in found)
    return {k: flagged[k] / total[k] for k in total}


# ------------------------------------------------------------------------------ timing

ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "a.a.a...": lambda n: ("a." * n)[:n],
    "digit run": lambda n: ("1234567890" * n)[:n],
    "@@@@": lambda n: "@" * n,
    "----": lambda n: "-" * n,
    "....": lambda n: "." * n,
    "a@a.a@a.": lambda n: ("a@a." * n)[:n],
    "4111 4111 ...": lambda n: ("4111 " * n)[:n],
    "00 00 00 ...": lambda n: ("00 " * n)[:n],
    "1.1.1.1.": lambda n: ("1." * n)[:n],
    ":::: / ab:ab:": lambda n: ("ab:" * n)[:n],
    "DE89 DE89 ...": lambda n: ("DE89 " * n)[:n],
    "word-word-": lambda n: ("word-" * n)[:n],
    "%25%25...": lambda n: ("%25" * n)[:n],
    "&amp;&amp;": lambda n: ("&amp;" * n)[:n],
    "zero-width": lambda n: ("a\u200b" * n)[:n],
    "full-width digits": lambda n: ("\uff11" * n)[:n],
}
SIZES = {"1 KB": 1024, "16 KB": 16384, "1 MB cap": 1_000_000}


def _time_once(run: Callable[[str], Any], text: str) -> float:
    t0 = time.perf_counter()
    with contextlib.suppress(DetectionError):
        run(text)
    return time.perf_counter() - t0


def _child(engine: Any, text: str, conn: Any) -> None:
    conn.send(_time_once(presidio(engine), text))


def time_presidio(engine: Any, text: str, timeout: float) -> float | None:
    """Presidio in a forked child so a stall can be cut off; None when it was."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(engine, text, child))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return None
    return float(parent.recv()) if parent.poll() else None


def typical_bodies(values: Values, count: int) -> tuple[list[str], list[str]]:
    """1 KB chat texts (prose, a few numbers, no personal data) and the same as OpenAI bodies."""
    texts, bodies = [], []
    for _ in range(count):
        words: list[str] = []
        while len(" ".join(words)) < 1024:
            words.append(values.en.paragraph(nb_sentences=3))
            if values.rng.random() < 0.5:
                price, days = values.rng.randint(2, 900), values.rng.randint(2, 30)
                words.append(
                    f"It costs {price} EUR and ships in {days} days, by {values.en.date()}."
                )
        text = " ".join(words)[:1024]
        texts.append(text)
        body = json.dumps({"model": "gpt-4o-mini", "temperature": 0.2,
                           "messages": [{"role": "system", "content": "You are helpful."},
                                        {"role": "user", "content": text[:900]}]})  # fmt: skip
        bodies.append(body)
    return texts, bodies


def _leaves(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _leaves(v)]
    if isinstance(node, list):
        return [s for v in node for s in _leaves(v)]
    return []


def per_call_us(fn: Callable[[], Any], min_seconds: float = 0.5) -> float:
    fn()
    laps = []
    end = time.perf_counter() + min_seconds
    while time.perf_counter() < end or len(laps) < 5:
        t0 = time.perf_counter_ns()
        fn()
        laps.append(time.perf_counter_ns() - t0)
    return statistics.median(laps) / 1e3


# ------------------------------------------------------------------------------ report


def fmt(x: float) -> str:
    return "  n/a" if x != x else f"{x:5.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=6000)
    ap.add_argument("--near-misses", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=10.0, help="Presidio per adversarial input")
    ap.add_argument("--skip-presidio", action="store_true")
    args = ap.parse_args()

    values = Values(args.seed)
    records = build(values, args.records)
    misses = near_misses(values, args.near_misses)
    evasion_set = evasions(values, 20)
    n_values = sum(len(r.gold) for r in records)
    print(f"# Redaction evaluation (seed {args.seed})\n")
    print(f"{len(records)} records ({', '.join(FAMILIES)}), {n_values} values of "
          f"{len(ENTITIES)} entity types; {len(misses)} near-miss records; "
          f"{len(evasion_set)} evasion records\n")  # fmt: skip

    detectors = Detectors.default()
    systems: dict[str, Callable[[str], Spans]] = {"ours": ours(detectors)}
    engine = None
    if not args.skip_presidio:
        engine = presidio_engine()
        systems["presidio"] = presidio(engine)

    scores: dict[str, Score] = {}
    for name, run in systems.items():
        scores[name], elapsed = score(records, run)
        print(f"{name}: {elapsed:.1f} s for the set ({elapsed / len(records) * 1e3:.2f} ms/record)")
    print()
    names = list(systems)
    head = "| entity | n | " + " | ".join(f"{n} R | {n} P | {n} F2" for n in names) + " |"
    print(head)
    print("|" + "---|" * (2 + 3 * len(names)))
    for e in ENTITIES:
        n = scores["ours"].tp[e] + scores["ours"].fn[e]
        cells = " | ".join(f"{fmt(scores[s].recall(e))} | {fmt(scores[s].precision(e))} | "
                           f"{fmt(scores[s].f2(e))}" for s in names)  # fmt: skip
        print(f"| {e} | {n} | {cells} |")
    print()
    print("Recall per template family (ours" + (" / presidio)" if engine else ")"))
    print("\n| entity | " + " | ".join(FAMILIES) + " |\n|---|" + "---|" * len(FAMILIES))
    for e in ENTITIES:
        cells = []
        for fam in FAMILIES:
            parts = []
            for s in names:
                sc = scores[s]
                n = sc.family_n[(fam, e)]
                parts.append(f"{sc.family_tp[(fam, e)] / n:.3f}" if n else "n/a")
            cells.append(" / ".join(parts))
        print(f"| {e} | " + " | ".join(cells) + " |")
    print()
    any_cov = scores["ours"]
    leaks = sum(any_cov.tp[e] + any_cov.fn[e] - any_cov.any_cover[e] for e in ENTITIES)
    print(f"ours: values not covered by a finding of any type: {leaks} of {n_values}\n")

    print("Near-misses flagged (false-positive rate; P2 target <= 0.02)\n")
    print("| near-miss | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    rates = {s: near_miss_rate(misses, run) for s, run in systems.items()}
    for kind in rates["ours"]:
        print(f"| {kind} | " + " | ".join(f"{rates[s][kind]:.3f}" for s in names) + " |")
    overall = {s: statistics.fmean(rates[s].values()) for s in names}
    print("| all | " + " | ".join(f"{overall[s]:.3f}" for s in names) + " |\n")

    print("Evasions: recall of the transformed value (P3)\n")
    print("| transform | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for transform in EVASIONS:
        recs = [r for t, r in evasion_set if t == transform]
        cells = []
        for s in names:
            sc, _ = score(recs, systems[s])
            tp, n = sum(sc.tp.values()), sum(sc.tp.values()) + sum(sc.fn.values())
            cells.append(f"{tp / n:.3f}")
        print(f"| {transform} | " + " | ".join(cells) + " |")
    print()

    texts, bodies = typical_bodies(values, 20)
    text_us = statistics.median(per_call_us(lambda t=t: detectors.scan(t), 0.2) for t in texts)

    def scan_body(body: str) -> None:
        for leaf in _leaves(json.loads(body)):
            detectors.scan(leaf)

    body_us = statistics.median(per_call_us(lambda b=b: scan_body(b), 0.2) for b in bodies)
    print(
        f"ours, typical 1 KB chat text: {text_us:.1f} us per scan (target <= 50 us); "
        f"as an OpenAI JSON body (parse + every string leaf): {body_us:.1f} us\n"
    )

    print("Worst case on adversarial inputs (ms; target <= 50 ms at 16 KB)\n")
    print("| input | " + " | ".join(f"{s} {size}" for size in SIZES for s in names) + " |")
    print("|---|" + "---|" * (len(SIZES) * len(names)))
    worst: dict[tuple[str, str], float] = defaultdict(float)
    for label, make in ADVERSARIAL.items():
        cells = []
        for size_name, size in SIZES.items():
            text = make(size)
            for s in names:
                if s == "ours":
                    t: float | None = _time_once(lambda x: detectors.scan(x), text)
                elif size > 16384:
                    t = None  # Presidio has no size cap; 1 MB inputs are not run
                else:
                    t = time_presidio(engine, text, args.timeout)
                if t is None:
                    cells.append(f"> {args.timeout:.0f} s" if size <= 16384 else "not run")
                    worst[(s, size_name)] = float("inf") if size <= 16384 else float("nan")
                else:
                    cells.append(f"{t * 1e3:.2f}")
                    worst[(s, size_name)] = max(worst[(s, size_name)], t)
        print(f"| {label} | " + " | ".join(cells) + " |")

    def worst_cell(ms: float) -> str:
        if ms != ms:
            return "not run"
        return "> timeout" if ms == float("inf") else f"**{ms:.1f}**"

    print("| **worst** | " + " | ".join(worst_cell(worst[(s, z)] * 1e3) for z in SIZES
                                       for s in names) + " |\n")  # fmt: skip

    sc = scores["ours"]
    verdicts = [
        ("checksum entities recall >= 0.99", all(sc.recall(e) >= 0.99 for e in CHECKSUM_ENTITIES)),
        ("checksum entities precision >= 0.95",
         all(sc.precision(e) >= 0.95 for e in CHECKSUM_ENTITIES)),
        ("cards recall >= 0.99", sc.recall("CARD") >= 0.99),
        ("near-miss false positives <= 0.02", overall["ours"] <= 0.02),
        ("<= 50 us per typical 1 KB chat text", text_us <= 50),
        ("<= 50 ms for 16 KB adversarial input", worst[("ours", "16 KB")] <= 0.05),
    ]  # fmt: skip
    print("Targets (ours)\n")
    for label, ok in verdicts:
        print(f"- {'PASS' if ok else 'FAIL'}: {label}")


if __name__ == "__main__":
    main()
