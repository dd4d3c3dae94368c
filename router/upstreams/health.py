"""Per-endpoint health: observed latency (EWMA and p95), passive outlier ejection (Envoy's
consecutive-5xx rule) and the verdict of active health checks, with hysteresis.

All methods take `now` (monotonic seconds) so tests drive time with a fake clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

# A try cut short by a timeout says only that the answer takes longer than it waited: it is
# counted as this many times the wait, so a tier slower than a budget is soon skipped for it
# (fail fast) instead of being learnt as just fast enough and waited on again and again.
CENSORED_FACTOR = 2.0
# An estimate raised by timeouts and not confirmed since for this long is given one more try:
# nothing else would re-measure a tier skipped by all the traffic it could serve.
RECHECK_S = 30.0


@dataclass(frozen=True, slots=True)
class OutlierRules:
    consecutive_failures: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejected_percent: int = 50


@dataclass(frozen=True, slots=True)
class CheckRules:
    healthy_threshold: int = 2  # consecutive passes to come back
    unhealthy_threshold: int = 3  # consecutive failures to go down


@dataclass(slots=True)
class EndpointHealth:
    prior_ms: float  # what we expect before anything was observed
    alpha: float = 0.2
    window: int = 64
    ewma_ms: float | None = None
    censored_at: float | None = None  # when a timeout last raised the estimate (monotonic s)
    recheck: bool = False  # a try is rechecking that raised estimate (try_started)
    samples: deque[float] = field(default_factory=deque)
    consecutive_failures: int = 0
    times_ejected: int = 0
    ejected_until: float = 0.0
    checked_healthy: bool = True
    _check_streak: int = 0  # >0 passes in a row, <0 failures in a row

    def timed_out(self, waited_ms: float, now: float) -> None:
        """A try cut by a timeout after `waited_ms`: the latency is more than that."""
        self.observe(waited_ms * CENSORED_FACTOR)
        self.censored_at = now
        self.recheck = False  # a recheck that found the tier slow still

    def expected(self, now: float) -> float:
        """`expected_ms`, except that an estimate timeouts raised above the prior and nothing
        confirmed for RECHECK_S falls back to the prior: one request tries the tier again."""
        return self.prior_ms if self.rechecking(now) else self.expected_ms

    def rechecking(self, now: float) -> bool:
        """Whether `expected` offers the prior in place of an estimate raised by timeouts."""
        censored = self.censored_at is not None and now - self.censored_at > RECHECK_S
        return censored and self.ewma_ms is not None and self.ewma_ms > self.prior_ms

    def try_started(self, now: float) -> None:
        """A try begins: when it is the one that rechecks a raised estimate, the requests
        meanwhile see that estimate again. Without this, every request decided before the
        recheck's answer (a budget's time under load) went to the tier it doubts, and
        waited out its budget there too."""
        if self.rechecking(now):
            self.censored_at = now
            self.recheck = True

    def answered(self, latency_ms: float) -> None:
        """A real answer: during a recheck it replaces the estimate the timeouts made, so a
        tier found fast again is used again at once."""
        if self.recheck:
            self.recheck = False
            self.censored_at = None
            self.ewma_ms = None
        self.observe(latency_ms)

    def observe(self, latency_ms: float) -> None:
        self.ewma_ms = (
            latency_ms
            if self.ewma_ms is None
            else self.alpha * latency_ms + (1 - self.alpha) * self.ewma_ms
        )
        self.samples.append(latency_ms)
        if len(self.samples) > self.window:
            self.samples.popleft()

    @property
    def expected_ms(self) -> float:
        return self.prior_ms if self.ewma_ms is None else self.ewma_ms

    @property
    def p95_ms(self) -> float:
        if not self.samples:
            return self.prior_ms
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]

    def succeeded(self) -> None:
        self.consecutive_failures = 0

    def failed(self, now: float, rules: OutlierRules, may_eject: bool) -> bool:
        """Count a failure; True when it ejects the endpoint."""
        self.consecutive_failures += 1
        if self.consecutive_failures < rules.consecutive_failures or not may_eject:
            return False
        self.times_ejected += 1
        duration = min(rules.base_ejection_s * self.times_ejected, rules.max_ejection_s)
        self.ejected_until = now + duration
        self.consecutive_failures = 0
        return True

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def check_result(self, passed: bool, rules: CheckRules) -> None:
        if passed:
            self._check_streak = max(self._check_streak, 0) + 1
            if not self.checked_healthy and self._check_streak >= rules.healthy_threshold:
                self.checked_healthy = True
                # The checks saw it go down and come back (a link flap, a restart): what got
                # it ejected is over, and waiting out the ejection would leave a working link
                # unused for up to max_ejection_s (Envoy's successful_active_health_check_
                # uneject_host, narrowed to a real down-and-up so that an endpoint failing
                # only real requests stays ejected).
                self.ejected_until = 0.0
        else:
            self._check_streak = min(self._check_streak, 0) - 1
            if self.checked_healthy and -self._check_streak >= rules.unhealthy_threshold:
                self.checked_healthy = False

    def live(self, now: float) -> bool:
        return self.checked_healthy and not self.ejected(now)


def may_eject(ejected: int, total: int, rules: OutlierRules) -> bool:
    """Envoy's max_ejection_percent: never eject past this share of a cluster, though one
    endpoint may always be ejected (so a single-endpoint cluster can still fail over)."""
    return ejected == 0 or (ejected + 1) * 100 <= total * rules.max_ejected_percent
