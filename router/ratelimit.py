"""Token buckets for tenants' rate limits and quotas, and the OpenAI-style headers that tell a
client where it stands (`x-ratelimit-limit-requests`, `-remaining-`, `-reset-`).

Written here rather than taken from a library: the headers need the bucket's level and refill
time, which rate-limiting libraries keep to themselves, and the whole thing is a few lines of
arithmetic on a monotonic clock with no locks (one event loop owns it)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from router.errors import RateLimited
from router.policy.model import RateLimit

Clock = Callable[[], float]
LIMIT = "x-ratelimit-limit-requests"
REMAINING = "x-ratelimit-remaining-requests"
RESET = "x-ratelimit-reset-requests"


class TokenBucket:
    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.capacity = float(limit.burst or limit.requests)
        self.rate = limit.requests / limit.period_s  # tokens per second
        self.tokens = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_s(self) -> float:
        """Until one token is back."""
        return max(0.0, (1.0 - self.tokens) / self.rate)

    def reset_s(self) -> float:
        """Until the bucket is full again."""
        return (self.capacity - self.tokens) / self.rate


class Limiter:
    """One tenant's buckets: a request passes when every bucket holds a token, and takes one
    from each; a refused request takes none."""

    __slots__ = ("_buckets", "_clock")

    def __init__(self, limits: Iterable[RateLimit], clock: Clock = time.monotonic) -> None:
        now = clock()
        self._clock = clock
        self._buckets = tuple(TokenBucket(limit, now) for limit in limits)

    def take(self) -> dict[str, str]:
        """The headers for the answer; raises RateLimited (429 + Retry-After) when empty."""
        now = self._clock()
        for bucket in self._buckets:
            bucket.refill(now)
        empty = [b for b in self._buckets if b.tokens < 1.0]
        if empty:
            wait = max(b.wait_s() for b in empty)
            error = RateLimited("rate limit reached for this tenant; retry later", wait)
            error.headers = _headers(min(empty, key=lambda b: b.tokens))
            raise error
        for bucket in self._buckets:
            bucket.tokens -= 1.0
        return _headers(min(self._buckets, key=lambda b: b.tokens / b.capacity))


def _headers(bucket: TokenBucket) -> dict[str, str]:
    return {
        # What may be sent at once (the burst), so that limit - remaining counts requests.
        LIMIT: str(int(bucket.capacity)),
        REMAINING: str(max(0, math.floor(bucket.tokens))),
        RESET: duration(bucket.reset_s()),
    }


def duration(seconds: float) -> str:
    """OpenAI's (Go's) form: `250ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1.0:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class Limiters:
    """Buckets that outlive a policy reload: a tenant whose limits did not change keeps its
    bucket (and its debt) when a new bundle is activated."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._by_tenant: dict[tuple[str, tuple[RateLimit, ...]], Limiter] = {}

    def for_tenants(self, wanted: dict[str, tuple[RateLimit, ...]]) -> dict[str, Limiter]:
        kept: dict[tuple[str, tuple[RateLimit, ...]], Limiter] = {}
        for name, limits in wanted.items():
            key = (name, limits)
            kept[key] = self._by_tenant.get(key) or Limiter(limits, self._clock)
        self._by_tenant = kept
        return {name: limiter for (name, _), limiter in kept.items()}
