"""What the request path counts for /metrics: plain integers on the event loop thread (one
dict update per request), turned into Prometheus families only when scraped.

Labels come from closed sets (API, tier, status class, entity type): never a model name a
client sent, a path, or anything else a request carries.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping

# Seconds: a local model answers in well under a millisecond, a chat stream takes minutes.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
APIS = frozenset({"kserve-v2", "openai"})
TIERS = frozenset({"edge", "regional", "central"})


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


class RequestMetrics:
    """Requests by API, served tier and status class; latency by API and tier; redactions
    applied, by entity type."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency: dict[tuple[str, str], Histogram] = {}
        self.redactions: Counter[str] = Counter()

    def observe(self, api: str, tier: str, status: int | None, seconds: float | None) -> None:
        """`status` None: the client left before the answer (outcome client_closed, nginx's
        499); `seconds` None: counted, not timed (refused before its arrival was taken)."""
        api = api if api in APIS else "other"
        tier = tier if tier in TIERS else "none"
        key = (api, tier, "client_closed" if status is None else _outcome(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        if seconds is None:
            return
        histogram = self.latency.get((api, tier))
        if histogram is None:
            histogram = self.latency[(api, tier)] = Histogram()
        histogram.observe(seconds)

    def redacted(self, counts: Mapping[str, int]) -> None:
        if counts:
            self.redactions.update(counts)


def _outcome(status: int) -> str:
    return "ok" if status < 400 else "client_error" if status < 500 else "server_error"
