"""The vocabulary shared by detectors, actions and rehydration."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Entity(StrEnum):
    """Entity types a detector can report. Custom bundle patterns use their own names."""

    EMAIL = "EMAIL"
    PHONE = "PHONE"
    CARD = "CARD"
    IBAN = "IBAN"
    US_SSN = "US_SSN"
    IP_ADDRESS = "IP_ADDRESS"
    NATIONAL_ID = "NATIONAL_ID"
    AWS_KEY = "AWS_KEY"
    GITHUB_TOKEN = "GITHUB_TOKEN"
    JWT = "JWT"
    BEARER_TOKEN = "BEARER_TOKEN"
    DATE_OF_BIRTH = "DATE_OF_BIRTH"


class Action(StrEnum):
    KEEP = "keep"
    DROP = "drop"  # the whole field goes (a JSON leaf is removed; text loses the value)
    MASK = "mask"  # irreversible: all but a short tail replaced by '*'
    HASH = "hash"  # keyed HMAC-SHA256 pseudonym, stable for a site: <EMAIL#3f9a2c1d>
    TOKENIZE = "tokenize"  # reversible placeholder <EMAIL_1>, restored in the answer


@dataclass(frozen=True, slots=True)
class Finding:
    entity: str  # an Entity value, or a custom pattern's name
    start: int  # offsets into the text that was scanned (after normalisation)
    end: int

    def value(self, text: str) -> str:
        return text[self.start : self.end]


class DetectionError(Exception):
    """Detection could not finish (input over the size cap, CPU deadline passed). Callers fail
    closed: nothing is forwarded unless the route is explicitly marked fail-open."""
