"""The response cache: byte-bounded LRU (cachetools) of finished answers, keyed by a keyed
digest of everything that decides the answer, with HTTP freshness (`Cache-Control`, `Age`).

Keys are keyed BLAKE2b digests under a key derived from the site secret, so neither the key
nor a dump of the cache index can be matched against guessed inputs. Entries outlive their
freshness by `max_stale_s` so an offline site can still answer from them, marked STALE with an
honest Age.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from cachetools import LRUCache

from router.audit.record import Digester
from router.headers import FRAMING

# delta-seconds past 2^31 mean "a very long time" (RFC 9111 §1.2.2).
_MAX_DELTA_SECONDS = 2**31
# A stale copy of an answer carrying one of these is never served: the origin asked that it
# be revalidated first, and a shared cache reads s-maxage as proxy-revalidate too (RFC 9111
# §5.2.2.2, §5.2.2.8, §5.2.2.10).
_REVALIDATE = frozenset({"must-revalidate", "proxy-revalidate", "s-maxage"})


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
    revalidate: bool = False  # never served stale (see _REVALIDATE)
    # The request headers the answer varies on (its Vary), with keyed digests of the values
    # they had (never the values: a Cookie or a token stays out of the cache): a request with
    # others is not served this answer (RFC 9111 §4.1).
    vary: tuple[tuple[str, bytes | None], ...] = ()
    # Who made the answer (served_by, version, artefact sha256, served model): a reuse's
    # audit record names them too, so it stands without its original's.
    model: tuple[str, str, str, str] = ("", "", "", "")

    def varies_from(self, headers: Mapping[str, str], digest: Callable[[str], bytes]) -> bool:
        return any(_digested(headers.get(name), digest) != value for name, value in self.vary)

    @property
    def size(self) -> int:
        # Headers count too: an upstream's can outweigh a small body many times.
        kept = sum(len(name) + len(value) for name, value in self.headers)
        return len(self.body) + sum(len(e) for e in self.events or ()) + kept + 256

    def age(self, now: float) -> float:
        return max(0.0, now - self.stored_at) + self.age_at_store

    def fresh(self, now: float) -> bool:
        return self.age(now) < self.fresh_s


@dataclass(frozen=True, slots=True)
class RequestDirectives:
    """What the client's Cache-Control asks of us (RFC 9111 §5.2.1)."""

    lookup: bool = True  # no-cache: skip the lookup, still store
    store: bool = True  # no-store: neither
    max_age: float | None = None  # the oldest answer the client takes
    min_fresh: float = 0.0  # freshness an answer must still have left
    max_stale: float | None = None  # staleness the client takes (inf: any)
    only_if_cached: bool = False  # a stored answer or 504, never the upstream

    @classmethod
    def parse(cls, header: str | None) -> RequestDirectives:
        if not header:
            return cls()
        found = directives(header)
        if "no-store" in found:
            return cls(lookup=False, store=False, only_if_cached="only-if-cached" in found)
        max_stale: float | None = None
        if "max-stale" in found:  # without a value: any staleness
            max_stale = _seconds(found["max-stale"]) if found["max-stale"] is not None else _INF
        return cls(
            lookup="no-cache" not in found,
            max_age=_seconds(found.get("max-age")),
            min_fresh=_seconds(found.get("min-fresh")) or 0.0,
            max_stale=max_stale,
            only_if_cached="only-if-cached" in found,
        )

    def fresh_enough(self, entry: Entry, now: float) -> bool:
        """A fresh answer as young and as lasting as the client asked."""
        age = entry.age(now)
        if self.max_age is not None and age > self.max_age:
            return False
        return age + self.min_fresh < entry.fresh_s

    def takes_stale(self, entry: Entry, now: float) -> bool:
        """A stale answer the client said it would take (max-stale), where its origin allows."""
        if self.max_stale is None or entry.revalidate or entry.fresh(now):
            return False
        age = entry.age(now)
        if self.max_age is not None and age > self.max_age:
            return False
        return age - entry.fresh_s <= self.max_stale


_INF = float("inf")


def directives(header: str) -> dict[str, str | None]:
    """Cache-Control's directives by lower-case name, values unquoted; the first of a name
    counts."""
    found: dict[str, str | None] = {}
    for token in header.split(","):
        name, has_value, value = token.partition("=")
        name = name.strip().lower()
        if name and name not in found:
            found[name] = value.strip().strip('"') if has_value else None
    return found


def _seconds(value: str | None) -> float | None:
    """delta-seconds (RFC 9111 §1.2.2); None when absent or not a number."""
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    return float(min(int(value), _MAX_DELTA_SECONDS))


def response_ttl(
    header: str | None, default_s: float, expires: str | None = None, age_s: float = 0.0
) -> float | None:
    """Seconds an answer may be reused, counted like its Age (`age_s` when it arrived): its
    s-maxage or max-age (a shared cache honours s-maxage first, RFC 9111 §5.2.2.10), else
    its Expires, else the default; None: never store it (no-store, private, no-cache: the
    upstream did not want it shared)."""
    if header:
        found = directives(header)
        if found.keys() & {"no-store", "private", "no-cache"}:
            return None
        for name in ("s-maxage", "max-age"):
            if name in found:
                # One that is no delta-seconds ("-1", "abc") makes the answer stale at once
                # (RFC 9111 §4.2.1): kept for no time, rather than for the default.
                return _seconds(found[name]) or 0.0
    if expires is not None:
        # A date, measured from now: the age it arrived with is behind it already (an
        # hour's answer a CDN held 50 minutes has 10 left, not none).
        left = _until(expires)
        return left + age_s if left else 0.0
    return default_s


def _until(expires: str) -> float:
    """Seconds from now to an Expires date; 0 for one past or invalid ("0" included: RFC
    9111 §5.3). Measured on this host's clock, as the upstream's Date is not relayed."""
    try:
        when = email.utils.parsedate_to_datetime(expires)
    except (TypeError, ValueError, IndexError):
        return 0.0
    if when.tzinfo is None:  # "-0000": UTC, the sender's own zone unknown
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, min(when.timestamp() - time.time(), float(_MAX_DELTA_SECONDS)))


def must_revalidate(header: str | None) -> bool:
    """Whether the upstream forbade serving this answer once stale."""
    return bool(header) and not directives(header or "").keys().isdisjoint(_REVALIDATE)


def vary_names(header: str | None) -> tuple[str, ...]:
    """The lower-case header names a Vary lists ("*": varies on what no cache can see), but
    for the transport's own (Accept-Encoding...): the client's are never forwarded, and the
    answer is kept decoded, to be encoded anew for each client."""
    if not header:
        return ()
    names = {name.strip().lower() for name in header.split(",")}
    return tuple(sorted(names - FRAMING - {""}))


def vary_values(
    headers: Mapping[str, str], names: Iterable[str], digest: Callable[[str], bytes]
) -> tuple[tuple[str, bytes | None], ...]:
    """What an entry keeps of the request headers its answer varies on: keyed digests."""
    return tuple((name, _digested(headers.get(name), digest)) for name in names)


def _digested(value: str | None, digest: Callable[[str], bytes]) -> bytes | None:
    return None if value is None else digest(value)


def upstream_age(header: str | None) -> float:
    """The Age an answer already had when it reached us (a chained cache's time counts). One
    sent on several lines arrives joined into a list: its first member counts (RFC 9111 §5.1)."""
    return _seconds(header.partition(",")[0].strip() if header else None) or 0.0


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

    def vary_digest(self, value: str) -> bytes:
        """A header value as an entry's Vary keeps it: keyed, like the cache's keys."""
        return self.key(("vary", value))

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
    def max_bytes(self) -> int:
        """The cache's size: no entry larger than this is ever kept."""
        return int(self._entries.maxsize)

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
