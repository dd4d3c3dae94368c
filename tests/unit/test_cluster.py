"""A cluster's bookkeeping: weighted endpoint choice, the circuit breaker, the retry budget and
outlier ejection across its endpoints."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from router.settings import ClusterSettings
from router.upstreams.cluster import Cluster


def make(*weights: int, **overrides: Any) -> Cluster:
    endpoints = [
        {"url": f"http://127.0.0.1:{9000 + i}", "weight": w} for i, w in enumerate(weights)
    ]
    data = {"name": "regional", "tier": "regional", "endpoints": endpoints, **overrides}
    return Cluster.from_settings(ClusterSettings.model_validate(data))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    random.seed(20240601)


class TestPick:
    def test_weighted(self) -> None:
        """Picks follow the endpoints' weights."""
        cluster = make(1, 3)
        picks = Counter(cluster.pick(0.0).index for _ in range(4000))  # type: ignore[union-attr]
        assert 0.65 < picks[1] / 4000 < 0.85

    def test_avoids_the_endpoint_that_just_failed(self) -> None:
        """A retry goes elsewhere whenever another endpoint is live."""
        cluster = make(1, 1, 1)
        failed = cluster.endpoints[1]
        picks = {cluster.pick(0.0, avoid=failed).index for _ in range(200)}  # type: ignore[union-attr]
        assert picks == {0, 2}

    def test_the_only_live_endpoint_is_picked_even_if_it_failed(self) -> None:
        """Avoiding is a preference: with one live endpoint, that one is tried again."""
        cluster = make(1, 1)
        cluster.endpoints[0].health.ejected_until = 60.0
        only = cluster.endpoints[1]
        assert cluster.pick(0.0, avoid=only) is only

    def test_skips_ejected_and_checked_down(self) -> None:
        """Ejected and checked-down endpoints are never picked; none live gives None."""
        cluster = make(1, 1, 1)
        cluster.endpoints[0].health.ejected_until = 60.0
        cluster.endpoints[2].health.checked_healthy = False
        assert {cluster.pick(0.0).index for _ in range(50)} == {1}  # type: ignore[union-attr]
        cluster.endpoints[1].health.ejected_until = 60.0
        assert cluster.pick(0.0) is None
        assert cluster.pick(60.0) is not None


class TestView:
    def test_view_of_live_endpoints(self) -> None:
        """The view counts live endpoints and expects the fastest live one's latency."""
        cluster = make(1, 1, expected_latency_ms=80.0, models=["a", "b"])
        cluster.endpoints[0].health.observe(10.0)
        view = cluster.view(0.0)
        assert (view.name, view.tier, view.live_endpoints) == ("regional", "regional", 2)
        assert view.expected_ms == 10.0
        assert view.models == frozenset({"a", "b"})
        assert view.protocols == frozenset({"openai", "kserve-v2"})
        cluster.endpoints[0].health.ejected_until = 5.0
        assert cluster.view(0.0).expected_ms == 80.0
        cluster.endpoints[1].health.checked_healthy = False
        view = cluster.view(0.0)
        assert view.live_endpoints == 0
        assert view.expected_ms == float("inf")

    def test_models_unknown_until_discovered(self) -> None:
        """Without a static model list the cluster serves nothing known yet."""
        assert make(1).view(0.0).models is None


class TestBreaker:
    def test_admits_up_to_connections_plus_pending(self) -> None:
        """max_connections + max_pending requests in flight; the next overflows and is
        counted as ours, not as an upstream failure."""
        cluster = make(1, max_connections=2, max_pending=1)
        assert [cluster.admit() for _ in range(4)] == [True, True, True, False]
        assert cluster.counters.overflows == 1
        assert cluster.counters.requests == 3
        assert cluster.counters.failures == 0
        assert cluster.live(0.0) == cluster.endpoints
        cluster.done()
        assert cluster.admit()
        assert cluster.active == 3

    def test_no_pending_room(self) -> None:
        """max_pending 0: exactly max_connections in flight."""
        cluster = make(1, max_connections=1, max_pending=0)
        assert [cluster.admit() for _ in range(3)] == [True, False, False]
        assert cluster.counters.overflows == 2


class TestRetryBudget:
    def test_min_concurrency_when_idle(self) -> None:
        """With few requests active, min_concurrency retries may be in flight at once."""
        cluster = make(1, retry={"min_concurrency": 3, "budget_percent": 20})
        allowed = []
        for _ in range(5):
            ok = cluster.retry_allowed()
            allowed.append(ok)
            cluster.retries_active += ok
        assert allowed == [True, True, True, False, False]
        assert cluster.counters.retries_denied == 2

    def test_percent_of_active(self) -> None:
        """With many requests active, the budget is that share of them."""
        cluster = make(1, retry={"min_concurrency": 3, "budget_percent": 20})
        cluster.active = 50
        cluster.retries_active = 9
        assert cluster.retry_allowed()
        cluster.retries_active = 10
        assert not cluster.retry_allowed()

    def test_zero_budget(self) -> None:
        """budget 0% and min_concurrency 0: no retries at all."""
        cluster = make(1, retry={"min_concurrency": 0, "budget_percent": 0})
        cluster.active = 100
        assert not cluster.retry_allowed()
        assert cluster.counters.retries_denied == 1


class TestOutliers:
    def test_record_failure_ejects_and_counts(self) -> None:
        """Five consecutive failures eject the endpoint and count an ejection."""
        cluster = make(1, 1, outlier={"consecutive_failures": 5, "base_ejection_s": 2.0})
        target = cluster.endpoints[0]
        for _ in range(5):
            cluster.record_failure(target, 100.0)
        assert cluster.counters.failures == 5
        assert cluster.counters.ejections == 1
        assert target.health.ejected_until == 102.0
        assert cluster.live(101.0) == [cluster.endpoints[1]]

    def test_ejection_share_limits_a_second_ejection(self) -> None:
        """At most max_ejected_percent of the cluster is ejected at once."""
        cluster = make(1, 1, outlier={"max_ejected_percent": 50})
        first, second = cluster.endpoints
        for _ in range(5):
            cluster.record_failure(first, 0.0)
        for _ in range(10):
            cluster.record_failure(second, 0.0)
        assert cluster.counters.ejections == 1
        assert not second.health.ejected(0.0)
        # Once the first is back, the second (still failing) may go.
        cluster.record_failure(second, 31.0)
        assert second.health.ejected(31.0)
        assert cluster.counters.ejections == 2

    def test_single_endpoint_cluster_can_be_ejected(self) -> None:
        """Even a 0% share lets a one-endpoint cluster be ejected, so traffic fails over."""
        cluster = make(1, outlier={"max_ejected_percent": 0})
        for _ in range(5):
            cluster.record_failure(cluster.endpoints[0], 0.0)
        assert cluster.view(1.0).live_endpoints == 0


class TestRefusedModels:
    def test_a_refusal_outlives_a_listing_that_still_names_the_model(self) -> None:
        """A model an endpoint refused stays out of a rediscovered listing until the
        discovery interval has passed, then the listing's word holds again."""
        cluster = make(1, discovery_interval_s=30)
        cluster.learn(frozenset({"gpt-a", "gpt-b"}), 0.0)
        cluster.refuse("gpt-a", 10.0)
        assert cluster.view(10.0).models == frozenset({"gpt-b"})
        cluster.learn(frozenset({"gpt-a", "gpt-b"}), 20.0)
        assert cluster.view(39.0).models == frozenset({"gpt-b"})
        assert cluster.view(40.0).models == frozenset({"gpt-a", "gpt-b"})
        assert cluster.refused == {}

    def test_a_configured_model_list_comes_back_too(self) -> None:
        """A cluster with a configured model list (no discovery) gets the model back when the
        refusal expires."""
        cluster = make(1, models=["gpt-a"], discovery_interval_s=5)
        cluster.refuse("gpt-a", 1.0)
        assert cluster.view(2.0).models == frozenset()
        assert cluster.view(6.0).models == frozenset({"gpt-a"})


class TestAuthCoolOff:
    def test_a_refused_credential_puts_the_cluster_last_for_its_cooloff(self) -> None:
        """A refusal of the router's credential marks the cluster's view as cooling off for
        outlier.auth_cooloff_s; past that it is first in its place again, its endpoints
        never ejected."""
        cluster = make(1, outlier={"auth_cooloff_s": 20})
        cluster.credential_refused(401, "request", 5.0)
        assert cluster.view(5.0).auth_cooloff
        assert cluster.view(24.9).auth_cooloff
        assert cluster.view(24.9).live_endpoints == 1
        assert not cluster.view(25.0).auth_cooloff

    def test_each_refusal_renews_the_cooloff(self) -> None:
        """A key still refused when the cool-off ends is refused again: a new cool-off."""
        cluster = make(1, outlier={"auth_cooloff_s": 20})
        cluster.credential_refused(403, "request", 0.0)
        cluster.credential_refused(403, "request", 25.0)
        assert cluster.view(44.0).auth_cooloff

    def test_an_accepted_answer_ends_the_cooloff(self) -> None:
        """An answer that accepts the key (a last-resort try, a key fixed meanwhile) gives the
        cluster its place back at once."""
        cluster = make(1)
        cluster.credential_refused(401, "request", 0.0)
        cluster.credential_accepted()
        assert not cluster.view(1.0).auth_cooloff
        assert not cluster.auth_failing

    def test_a_zero_cooloff_never_puts_the_cluster_last(self) -> None:
        """auth_cooloff_s: 0 keeps the old order (the refusal is still counted)."""
        cluster = make(1, outlier={"auth_cooloff_s": 0})
        cluster.credential_refused(401, "request", 3.0)
        assert not cluster.view(3.0).auth_cooloff
        assert cluster.counters.auth_failures == 1
