"""Per-endpoint health: latency estimates, passive outlier ejection and active-check hysteresis,
driven with a fake clock (`now` is passed in)."""

from __future__ import annotations

import pytest

from router.upstreams.health import (
    RECHECK_S,
    CheckRules,
    EndpointHealth,
    OutlierRules,
    may_eject,
)

RULES = OutlierRules(consecutive_failures=5, base_ejection_s=10.0, max_ejection_s=25.0)


def fail(health: EndpointHealth, times: int, now: float = 0.0, allowed: bool = True) -> list[bool]:
    return [health.failed(now, RULES, allowed) for _ in range(times)]


class TestLatency:
    def test_prior_before_any_sample(self) -> None:
        """Nothing observed: both estimates are the configured prior."""
        health = EndpointHealth(prior_ms=40.0)
        assert health.expected_ms == 40.0
        assert health.p95_ms == 40.0

    def test_ewma(self) -> None:
        """The first sample is taken as is, later ones are blended with weight alpha."""
        health = EndpointHealth(prior_ms=40.0, alpha=0.25)
        health.observe(100.0)
        assert health.expected_ms == 100.0
        health.observe(20.0)
        assert health.expected_ms == pytest.approx(0.25 * 20.0 + 0.75 * 100.0)
        health.observe(20.0)
        assert health.expected_ms == pytest.approx(0.25 * 20.0 + 0.75 * 80.0)

    def test_p95(self) -> None:
        """p95 is the nearest-rank 95th percentile of the samples."""
        health = EndpointHealth(prior_ms=1.0)
        for value in range(20, 0, -1):
            health.observe(float(value))
        assert health.p95_ms == 19.0
        health.observe(1000.0)
        assert health.p95_ms == 20.0

    def test_p95_window_forgets_the_oldest(self) -> None:
        """Only the last `window` samples count: an old spike ages out."""
        health = EndpointHealth(prior_ms=1.0, window=4)
        health.observe(500.0)
        for _ in range(4):
            health.observe(10.0)
        assert list(health.samples) == [10.0] * 4
        assert health.p95_ms == 10.0


class TestOutlierEjection:
    def test_ejected_on_the_nth_consecutive_failure(self) -> None:
        """Four failures leave the endpoint in; the fifth ejects it for the base time."""
        health = EndpointHealth(prior_ms=1.0)
        assert fail(health, 5, now=100.0) == [False, False, False, False, True]
        assert health.times_ejected == 1
        assert health.ejected(100.0)
        assert health.ejected(109.9)
        assert not health.ejected(110.0)
        assert not health.live(100.0)
        assert health.live(110.0)

    def test_duration_grows_with_each_ejection_up_to_the_cap(self) -> None:
        """Ejection lasts base x times ejected, never more than the maximum."""
        health = EndpointHealth(prior_ms=1.0)
        durations = []
        now = 0.0
        for _ in range(4):
            assert fail(health, 5, now)[-1]
            durations.append(health.ejected_until - now)
            now = health.ejected_until
        assert durations == [10.0, 20.0, 25.0, 25.0]

    def test_success_resets_the_streak(self) -> None:
        """Failures separated by a success are not consecutive."""
        health = EndpointHealth(prior_ms=1.0)
        fail(health, 4)
        health.succeeded()
        assert fail(health, 4) == [False] * 4
        assert not health.ejected(0.0)
        assert health.failed(0.0, RULES, True)

    def test_not_ejected_when_the_cluster_forbids_it(self) -> None:
        """Past the cluster's ejection share the streak keeps counting but nothing is ejected;
        the first failure after ejection is allowed again ejects."""
        health = EndpointHealth(prior_ms=1.0)
        assert fail(health, 7, allowed=False) == [False] * 7
        assert health.times_ejected == 0
        assert health.consecutive_failures == 7
        assert health.failed(0.0, RULES, True)

    def test_streak_restarts_after_ejection(self) -> None:
        """An endpoint back from ejection needs a full new streak to be ejected again."""
        health = EndpointHealth(prior_ms=1.0)
        fail(health, 5)
        assert fail(health, 4, now=20.0) == [False] * 4
        assert health.failed(20.0, RULES, True)


class TestMaxEjectedPercent:
    @pytest.mark.parametrize(
        ("ejected", "total", "percent", "allowed"),
        [
            (0, 1, 50, True),  # one endpoint may always be ejected
            (0, 2, 0, True),  # even with a 0% share
            (0, 4, 10, True),
            (1, 2, 50, False),  # a second of two would be 100%
            (1, 4, 50, True),  # 2 of 4 is 50%
            (2, 4, 50, False),  # 3 of 4 is 75%
            (1, 2, 100, True),
            (9, 10, 100, True),
        ],
    )
    def test_share(self, ejected: int, total: int, percent: int, allowed: bool) -> None:
        """Another ejection is allowed while the ejected share stays within the limit."""
        rules = OutlierRules(max_ejected_percent=percent)
        assert may_eject(ejected, total, rules) is allowed


class TestActiveChecks:
    CHECKS = CheckRules(healthy_threshold=2, unhealthy_threshold=3)

    def test_down_after_unhealthy_threshold(self) -> None:
        """Two failed checks are tolerated; the third marks the endpoint down."""
        health = EndpointHealth(prior_ms=1.0)
        for _ in range(2):
            health.check_result(False, self.CHECKS)
            assert health.checked_healthy
        health.check_result(False, self.CHECKS)
        assert not health.checked_healthy
        assert not health.live(0.0)

    def test_a_pass_breaks_a_failing_streak(self) -> None:
        """Fail, fail, pass, fail, fail: never three in a row, never down."""
        health = EndpointHealth(prior_ms=1.0)
        for passed in (False, False, True, False, False):
            health.check_result(passed, self.CHECKS)
        assert health.checked_healthy

    def test_back_after_healthy_threshold(self) -> None:
        """A down endpoint needs two passes in a row to come back; a failure in between
        restarts the count."""
        health = EndpointHealth(prior_ms=1.0)
        for _ in range(3):
            health.check_result(False, self.CHECKS)
        health.check_result(True, self.CHECKS)
        assert not health.checked_healthy
        health.check_result(False, self.CHECKS)
        health.check_result(True, self.CHECKS)
        assert not health.checked_healthy
        health.check_result(True, self.CHECKS)
        assert health.checked_healthy
        assert health.live(0.0)

    def test_live_needs_both_verdicts(self) -> None:
        """Live means checked healthy and not ejected."""
        health = EndpointHealth(prior_ms=1.0)
        fail(health, 5, now=0.0)
        assert health.checked_healthy
        assert not health.live(5.0)
        assert health.live(10.0)

    def test_coming_back_ends_an_ejection(self) -> None:
        """Checked down, then up again: the ejection (from the outage) ends with it."""
        health = EndpointHealth(prior_ms=1.0)
        fail(health, 5, now=0.0)
        for _ in range(3):
            health.check_result(False, self.CHECKS)
        for _ in range(2):
            health.check_result(True, self.CHECKS)
        assert health.live(1.0)

    def test_passing_checks_alone_keep_the_ejection(self) -> None:
        """An endpoint that never failed a check stays ejected: its requests were failing."""
        health = EndpointHealth(prior_ms=1.0)
        fail(health, 5, now=0.0)
        for _ in range(5):
            health.check_result(True, self.CHECKS)
        assert not health.live(1.0)


class TestTimeouts:
    def test_a_timeout_counts_as_more_than_the_wait(self) -> None:
        """A try cut at 300 ms raises the estimate past 300 ms within a few timeouts, so a
        300 ms budget skips the tier instead of waiting for it again and again."""
        health = EndpointHealth(prior_ms=50.0)
        for _ in range(3):
            health.timed_out(300.0, now=10.0)
        assert health.expected(10.0) > 300.0

    def test_a_raised_estimate_is_tried_again_after_a_while(self) -> None:
        """Unconfirmed for RECHECK_S, the estimate falls back to the prior: one request tries
        the tier again; another timeout raises it anew."""
        health = EndpointHealth(prior_ms=50.0)
        for _ in range(5):
            health.timed_out(300.0, now=10.0)
        assert health.expected(10.0 + RECHECK_S - 1) > 300.0
        assert health.expected(10.0 + RECHECK_S + 1) == 50.0
        health.timed_out(300.0, now=10.0 + RECHECK_S + 1)
        assert health.expected(10.0 + RECHECK_S + 2) > 300.0

    def test_plain_observations_never_fall_back(self) -> None:
        """A slow tier measured by answers (not timeouts) keeps its estimate."""
        health = EndpointHealth(prior_ms=50.0)
        health.observe(400.0)
        assert health.expected(1e9) == 400.0
