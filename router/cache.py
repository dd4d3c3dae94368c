"""The response cache: byte-bounded LRU (cachetools) of finished answers, keyed by a keyed
digest of everything that decides the answer, with HTTP freshness (`Cache-Control`, `Age`).

Keys are keyed BLAKE2b digests under a key derived from the site secret, so neither the key
nor a dump of the cache index can be matched against guessed inputs. Entries outlive their
freshness by `max_stale_s` so an offline site can still answer from them, marked STALE with an
honest Age.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from cachetools import LRUCache

from router.audit.record import Digester

_AGE_DIRECTIVE = r"(?:^|,)\s*{}\s*=\s*\"?(\d{{1,10}})\"?"
# A shared cache honours s-maxage over max-age (RFC 9111 §5.2.2.10).
_LIFETIMES = tuple(
    re.compile(_AGE_DIRECTIVE.format(name), re.IGNORECASE) for name in ("s-maxage", "max-age")
)


class Outcome(StrEnum):
    HIT = "HIT"
    MISS = "MISS"
    STALE = "STALE"
    BYPASS = "BYPASS"


@dataclass(frozen=True, slots=True)
class Entry:
    status: int
    content_type: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    events: tuple[bytes, ...] | None  # an SSE answer, replayed chunk by chunk
    stored_at: float  # monotonic seconds
    fresh_s: float
    tier: str  # who produced it, reported again on a hit
    reasons: str
    audit_id: str = ""  # the record of the answer's original generation
    age_at_store: float = 0.0  # the Age it arrived with from a chained cache

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(e) for e in self.events or ()) + 256

    def age(self, now: float) -> float:
        return max(0.0, now - self.stored_at) + self.age_at_store

    def fresh(self, now: float) -> bool:
        return self.age(now) < self.fresh_s


@dataclass(frozen=True, slots=True)
class RequestDirectives:
    """What the client's Cache-Control asks of us."""

    lookup: bool = True  # no-cache: skip the lookup, still store
    store: bool = True  # no-store: neither

    @classmethod
    def parse(cls, header: str | None) -> RequestDirectives:
        if not header:
            return cls()
        tokens = {t.strip().split("=", 1)[0].lower() for t in header.split(",")}
        if "no-store" in tokens:
            return cls(lookup=False, store=False)
        return cls(lookup="no-cache" not in tokens)


def response_ttl(header: str | None, default_s: float) -> float | None:
    """Seconds an answer may be reused: its max-age, else the default; None: never store it
    (no-store, private, no-cache: the upstream did not want it shared)."""
    if header:
        tokens = {t.strip().split("=", 1)[0].lower() for t in header.split(",")}
        if tokens & {"no-store", "private", "no-cache"}:
            return None
        for directive in _LIFETIMES:
            match = directive.search(header)
            if match:
                return float(match.group(1))
    return default_s


def upstream_age(header: str | None) -> float:
    """The Age an answer already had when it reached us (a chained cache's time counts)."""
    return float(header) if header and header.strip().isdigit() else 0.0


class ResponseCache:
    def __init__(
        self,
        secret: bytes,
        max_bytes: int,
        max_stale_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._mac_key = hmac.new(secret, b"layer-router cache key v2", hashlib.sha256).digest()
        # Binary tensors enter keys by their keyed digests; the audit trail digests with this
        # same digester, so an image-sized body is read once for both (`tensor_digests`).
        self.digester = Digester(secret)
        self._entries: LRUCache[bytes, Entry] = LRUCache(max_bytes, getsizeof=_size)
        self._max_stale_s = max_stale_s
        self._clock = clock
        self.counts: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self._apis: set[str] = set()  # those whose answers were ever kept

    def key(self, parts: Iterable[bytes | memoryview | str]) -> bytes:
        # Keyed BLAKE2b: a MAC like HMAC-SHA256, without HMAC's per-update Python layer.
        mac = hashlib.blake2b(key=self._mac_key, digest_size=32)
        for part in parts:
            data = part.encode() if isinstance(part, str) else part
            mac.update(len(data).to_bytes(8, "little"))  # framing: no two part lists collide
            mac.update(data)
        return mac.digest()

    def get(self, key: bytes, *, allow_stale: bool) -> tuple[Entry, Outcome] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        if entry.fresh(now):
            return entry, Outcome.HIT
        if entry.age(now) > entry.fresh_s + self._max_stale_s:
            self._entries.pop(key, None)
            return None
        return (entry, Outcome.STALE) if allow_stale else None

    def put(self, key: bytes, entry: Entry, api: str = "") -> None:
        if entry.size <= self._entries.maxsize:
            self._entries[key] = entry
            self._apis.add(api)

    def may_hold(self, api: str) -> bool:
        """Whether an answer to `api` was ever kept (and so may still be here)."""
        return api in self._apis

    def count(self, outcome: Outcome) -> None:
        self.counts[outcome] += 1

    @property
    def bytes_used(self) -> int:
        return int(self._entries.currsize)

    def now(self) -> float:
        return self._clock()


def _size(entry: Entry) -> int:
    return entry.size


def entry_headers(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Headers worth replaying with a cached answer: not those that belong to one answer."""
    skip = {"age", "x-cache", "x-request-id", "server-timing", "x-redactions"}
    return tuple((k, v) for k, v in headers.items() if k.lower() not in skip)
