"""One audit record per response, its time-ordered id, and the keyed digests that stand in for
request and response content (the trail names what was served, never what was said)."""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

# Crockford's base32, as ULIDs use: no I, L, O or U, so ids survive being read aloud or retyped.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {char: value for value, char in enumerate(_ALPHABET)}
ID_LENGTH = 26
# The first character carries three bits of the time (128 bits in 130): 0-7.
ID_PATTERN = re.compile(rf"^[0-7][{_ALPHABET}]{{{ID_LENGTH - 1}}}$")

# Past this many fragments a document is digested whole: a per-leaf map of a large free-form
# document would make records as big as requests.
MAX_FRAGMENTS = 256
# Object keys are kept in fragment paths only when they look like schema ("inputs", "content");
# any other key may itself be personal data (a map keyed by e-mail) and is replaced by a digest.
_SCHEMA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_DIGEST_CONTEXT = b"layer-router audit digest v1"


# Two base32 characters per 10 bits: a ULID in 13 look-ups instead of 26 shifts and masks.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


def new_audit_id(now_ms: int | None = None) -> str:
    """A ULID: 48 bits of Unix milliseconds then 80 random bits, as 26 base32 characters, so
    ids sort by creation time and need no coordination between processes."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    # Unique, not secret: the Mersenne Twister spares a getrandom() system call per answer.
    r = random.getrandbits(80)
    p = _PAIRS
    return "".join(
        (
            _time_chars(ms),
            p[r >> 70],
            p[(r >> 60) & 1023],
            p[(r >> 50) & 1023],
            p[(r >> 40) & 1023],
            p[(r >> 30) & 1023],
            p[(r >> 20) & 1023],
            p[(r >> 10) & 1023],
            p[r & 1023],
        )
    )


@lru_cache(maxsize=8)
def _time_chars(ms: int) -> str:
    """The id's first 10 characters: two zero bits, then the 48 bits of the time (the same for
    every id made within a millisecond)."""
    p = _PAIRS
    return "".join(p[(ms >> shift) & 1023] for shift in (40, 30, 20, 10, 0))


def id_time(audit_id: str) -> str:
    """The UTC ISO-8601 time, to the millisecond, at which the id was made."""
    if not ID_PATTERN.match(audit_id):
        raise ValueError("not an audit id")
    return _time_of(audit_id[:10])


@lru_cache(maxsize=64)
def _time_of(time_chars: str) -> str:
    """The time an id's first 10 characters carry (two zero bits, then the milliseconds);
    remembered, as many records are made within the same millisecond under load."""
    ms = 0
    for char in time_chars:
        ms = (ms << 5) | _DECODE[char]
    seconds, millis = divmod(ms, 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


@lru_cache(maxsize=8)
def _second(seconds: int) -> str:
    """A Unix second in ISO-8601, remembered: formatting a datetime costs more than the rest
    of a record's encoding, and one request a millisecond still shares its second."""
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """What the trail keeps about one response. Its `time` is read from its id."""

    id: str = field(default_factory=new_audit_id)
    site: str
    tier: str  # the tier of the site that wrote the record
    api: str = ""  # "kserve-v2" | "openai"
    status: int = 200
    request_id: str = ""
    tenant: str = ""  # the tenant's name (never its key); "anonymous" without authentication
    served_tier: str = ""
    served_by: str = ""  # "model/version" for a local model, else "cluster endpoint"
    model: str = ""
    model_version: str = ""
    model_sha256: str = ""  # of the artefact that ran; empty when an upstream served it
    policy_revision: str = ""
    reasons: tuple[str, ...] = ()
    data_class: str = ""
    entities: Mapping[str, int] = field(default_factory=dict)  # found, per entity type
    redactions: Mapping[str, int] = field(default_factory=dict)  # applied, per entity type
    cache: str | None = None  # "HIT" | "STALE" | "MISS" | "BYPASS"; None: no cache involved
    cache_of: str | None = None  # a cached answer: the id of the record that produced it
    inputs: Mapping[str, str] = field(default_factory=dict)  # fragment path -> keyed digest
    output: str | None = None  # keyed digest of the response body as sent

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "response",
            "id": self.id,
            "time": id_time(self.id),
            "site": self.site,
            "tier": self.tier,
            "api": self.api,
            "status": self.status,
            "request_id": self.request_id,
            "tenant": self.tenant,
            "served_tier": self.served_tier,
            "served_by": self.served_by,
            "model": self.model,
            "model_version": self.model_version,
            "model_sha256": self.model_sha256,
            "policy_revision": self.policy_revision,
            "reasons": list(self.reasons),
            "data_class": self.data_class,
            "entities": {k: n for k, n in sorted(self.entities.items()) if n},
            "redactions": {k: n for k, n in sorted(self.redactions.items()) if n},
            "cache": self.cache,
            "cache_of": self.cache_of,
            "inputs": dict(self.inputs),
            "output": self.output,
        }


class Digester:
    """Keyed digests (HMAC-SHA256, hex) of content, under a key derived from the site secret.

    Whoever holds the secret can check that a given input or output is the one a record names;
    whoever only holds the log cannot test guesses against it (plain hashes of e-mail addresses
    or card numbers fall to a dictionary attack in seconds). The key is derived rather than the
    secret itself so that audit digests cannot be matched against pseudonyms made with it. Each
    digest is bound to its fragment's path, so equal values at different places do not link.
    """

    __slots__ = ("_inner", "_key", "_outer")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the audit secret must be at least 16 bytes")
        self._key = hmac.new(secret, _DIGEST_CONTEXT, hashlib.sha256).digest()
        # HMAC's two keyed SHA-256 states (RFC 2104), made once: copying them is what
        # `hmac.new` does per call after a costlier set-up, and a record digests every leaf.
        block = self._key.ljust(64, b"\x00")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def digest(self, label: str, data: bytes | memoryview) -> str:
        inner = self._inner.copy()
        inner.update(label.encode() + b"\x00")
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def stream(self, label: str) -> hmac.HMAC:
        """A digest to feed piece by piece (a streamed answer); equal to `digest` of the whole."""
        return hmac.new(self._key, label.encode() + b"\x00", hashlib.sha256)

    def fragments(
        self,
        document: Any,
        limit: int = MAX_FRAGMENTS,
        holds_data: Callable[[str], bool] | None = None,
    ) -> dict[str, str]:
        """One digest per JSON leaf, keyed by its path (`$.inputs[0].data`); an array of numbers
        (a tensor) is one leaf. Past `limit` leaves, one digest of the whole document at `$`.
        A key that looks like schema is kept in the path unless `holds_data` says detection
        finds something in it (an access key used as a key): then it is digested too."""
        leaves: list[tuple[str, Any]] = []
        if not self._collect(document, "$", leaves, limit, holds_data):
            return {"$": self.digest("$", _canonical(document))}
        return {path: self.digest(path, _canonical(value)) for path, value in leaves}

    def tensors(self, document: Mapping[str, Any], binary: bytes | memoryview) -> dict[str, str]:
        """Digests of a KServe v2 body's binary tensors, one per input (`$.inputs[0].binary`);
        when the stated sizes do not add up, one digest of the whole binary part."""
        found: dict[str, str] = {}
        offset = 0
        inputs = document.get("inputs")
        for index, tensor in enumerate(inputs if isinstance(inputs, list) else ()):
            params = tensor.get("parameters") if isinstance(tensor, dict) else None
            size = params.get("binary_data_size") if isinstance(params, dict) else None
            if isinstance(size, int) and 0 <= size <= len(binary) - offset:
                path = f"$.inputs[{index}].binary"
                found[path] = self.digest(path, binary[offset : offset + size])
                offset += size
        if offset != len(binary):
            return {"$.binary": self.digest("$.binary", binary)}
        return found

    def _collect(
        self,
        value: Any,
        path: str,
        leaves: list[tuple[str, Any]],
        limit: int,
        holds_data: Callable[[str], bool] | None,
    ) -> bool:
        """Append (path, leaf) pairs to `leaves`; False as soon as there are more than `limit`.
        (A plain recursion: a generator per level cost more than the digests.)"""
        if isinstance(value, dict) and value:
            for key, item in value.items():
                segment = self._segment(str(key), holds_data)
                if not self._collect(item, path + segment, leaves, limit, holds_data):
                    return False
        elif isinstance(value, list) and value and not _is_tensor(value):
            for index, item in enumerate(value):
                if not self._collect(item, f"{path}[{index}]", leaves, limit, holds_data):
                    return False
        else:
            leaves.append((path, value))
            return len(leaves) <= limit
        return True

    def _segment(self, key: str, holds_data: Callable[[str], bool] | None) -> str:
        segment = _SCHEMA_SEGMENTS.get(key)
        if segment is not None:
            return segment
        if _SCHEMA_KEY.match(key) and not (holds_data is not None and holds_data(key)):
            # Remembered only once checked: a key never checked may be an access key.
            if holds_data is not None and len(_SCHEMA_SEGMENTS) < _SCHEMA_SEGMENTS_MAX:
                _SCHEMA_SEGMENTS[key] = "." + key
            return "." + key
        return f"[#{self.digest('key', key.encode('utf-8', 'surrogatepass'))[:16]}]"

    def __repr__(self) -> str:
        return "Digester(<secret>)"


# Segments of keys already seen to be schema ("inputs", checked by detection): only those,
# never a key that could be personal data or a credential, and only so many.
_SCHEMA_SEGMENTS: dict[str, str] = {}
_SCHEMA_SEGMENTS_MAX = 1024
_NUMBER_TYPES = frozenset((int, float, bool))


def _is_tensor(value: list[Any]) -> bool:
    """Numbers and booleans only, at any nesting depth: tensor data, digested as one piece."""
    if _NUMBER_TYPES.issuperset(map(type, value)):  # a flat tensor, checked in C
        return True
    for item in value:
        if type(item) in _NUMBER_TYPES:  # exact types first: the common case, and cheap
            continue
        if isinstance(item, int | float) or (isinstance(item, list) and _is_tensor(item)):
            continue
        return False
    return True


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
