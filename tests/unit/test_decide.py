"""The routing decision as a table: facts + rules + health snapshot in, ordered targets, reasons
and a failure code out. Pure, so every case is one line of data."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from router.policy.decide import (
    ClusterView,
    Facts,
    Failure,
    LocalView,
    Rules,
    Snapshot,
    Target,
    decide,
)

BOTH = frozenset({"openai", "kserve-v2"})


def cluster(
    name: str,
    tier: str | None = None,
    *,
    models: Iterable[str] | None = ("m",),
    live: int = 1,
    expected: float = 50.0,
    protocols: frozenset[str] = BOTH,
    cooloff: bool = False,
) -> ClusterView:
    return ClusterView(
        name=name,
        tier=tier or name,
        protocols=protocols,
        models=None if models is None else frozenset(models),
        live_endpoints=live,
        expected_ms=expected,
        auth_cooloff=cooloff,
    )


def local(expected: float = 5.0, ready: bool = True) -> dict[str, LocalView]:
    return {"m": LocalView(ready=ready, expected_ms=expected)}


REGIONAL = cluster("regional")
CENTRAL = cluster("central", expected=100.0)


@dataclass(frozen=True)
class Case:
    facts: Facts
    snapshot: Snapshot
    targets: tuple[str, ...]  # "local:m" or the cluster's name, in order
    reasons: tuple[str, ...] = ()
    failure: Failure | None = None
    rules: Rules = field(default_factory=Rules)
    permitted: frozenset[str] | None = None  # the clusters residency allows (None: all)


def v2(budget: float = 1000.0, payload: int = 0, model: str = "m") -> Facts:
    return Facts("kserve-v2", model, budget, payload)


def oa(budget: float = 1000.0, model: str = "m") -> Facts:
    return Facts("openai", model, budget)


CASES = {
    "local first when here and within budget": Case(
        v2(), Snapshot(local(), (REGIONAL, CENTRAL)), ("local:m", "regional", "central")
    ),
    "local only": Case(v2(), Snapshot(local(), ()), ("local:m",)),
    "budget equal to the expectation still fits": Case(
        v2(budget=50.0), Snapshot({}, (REGIONAL,)), ("regional",)
    ),
    "heavy model is forwarded": Case(
        v2(),
        Snapshot(local(), (REGIONAL,)),
        ("regional",),
        ("heavy_model",),
        rules=Rules(heavy_models=frozenset({"m"})),
    ),
    "payload over the local maximum is forwarded": Case(
        v2(payload=2048),
        Snapshot(local(), (REGIONAL,)),
        ("regional",),
        ("payload_too_large_for_local",),
        rules=Rules(local_max_payload_bytes=1024),
    ),
    "payload at the local maximum stays local": Case(
        v2(payload=1024),
        Snapshot(local(), ()),
        ("local:m",),
        rules=Rules(local_max_payload_bytes=1024),
    ),
    "local over budget is skipped with a reason": Case(
        v2(budget=30.0),
        Snapshot(local(expected=40.0), (cluster("regional", expected=20.0),)),
        ("regional",),
        ("local_over_budget",),
    ),
    "local not ready is skipped with a reason": Case(
        v2(), Snapshot(local(ready=False), (REGIONAL,)), ("regional",), ("local_not_ready",)
    ),
    "tiers in order edge, regional, central whatever the config order": Case(
        v2(),
        Snapshot({}, (CENTRAL, REGIONAL, cluster("llm", "edge", expected=500.0))),
        ("llm", "regional", "central"),
    ),
    "within a tier the faster cluster first": Case(
        v2(),
        Snapshot({}, (cluster("r-slow", "regional", expected=90.0), cluster("r-fast", "regional"))),
        ("r-fast", "r-slow"),
    ),
    "cluster not serving the model is skipped silently": Case(
        v2(), Snapshot({}, (cluster("regional", models=("other",)), CENTRAL)), ("central",)
    ),
    "cluster not discovered yet is skipped silently": Case(
        v2(), Snapshot({}, (cluster("regional", models=None), CENTRAL)), ("central",)
    ),
    "cluster with no live endpoint is skipped as unhealthy": Case(
        v2(),
        Snapshot({}, (cluster("regional", live=0), CENTRAL)),
        ("central",),
        ("unhealthy:regional",),
    ),
    "cluster slower than the budget is skipped as over budget": Case(
        v2(budget=300.0),
        Snapshot({}, (cluster("regional", expected=500.0), CENTRAL)),
        ("central",),
        ("over_budget:regional",),
    ),
    "a cluster cooling off after refusing the router's key goes after every other": Case(
        v2(),
        Snapshot(local(), (cluster("regional", cooloff=True), CENTRAL)),
        ("local:m", "central", "regional"),
        ("auth_cooloff:regional",),
    ),
    "cooling off goes after farther tiers and slower clusters too": Case(
        v2(),
        Snapshot(
            {},
            (
                cluster("r-fast", "regional", expected=1.0, cooloff=True),
                cluster("r-slow", "regional", expected=90.0),
                CENTRAL,
            ),
        ),
        ("r-slow", "central", "r-fast"),
        ("auth_cooloff:r-fast",),
    ),
    "a cluster cooling off is still the last resort when alone": Case(
        oa(),
        Snapshot({}, (cluster("regional", cooloff=True),)),
        ("regional",),
        ("auth_cooloff:regional",),
    ),
    "cooling off does not hide that a cluster is down": Case(
        v2(),
        Snapshot({}, (cluster("regional", live=0, cooloff=True), CENTRAL)),
        ("central",),
        ("unhealthy:regional",),
    ),
    "protocol mismatch is skipped silently": Case(
        v2(),
        Snapshot({}, (cluster("regional", protocols=frozenset({"openai"})), CENTRAL)),
        ("central",),
    ),
    "openai never targets a local v2 model": Case(
        oa(), Snapshot(local(), (REGIONAL,)), ("regional",)
    ),
    "openai request for a model only served locally is unknown": Case(
        oa(), Snapshot(local(), ()), (), (), Failure.UNKNOWN_MODEL
    ),
    "unknown model": Case(
        v2(model="nope"), Snapshot(local(), (REGIONAL, CENTRAL)), (), (), Failure.UNKNOWN_MODEL
    ),
    "served but every target over budget": Case(
        v2(budget=10.0),
        Snapshot(local(expected=20.0), (REGIONAL, CENTRAL)),
        (),
        ("local_over_budget", "over_budget:regional", "over_budget:central"),
        Failure.OVER_BUDGET,
    ),
    "served but every target down": Case(
        v2(),
        Snapshot({}, (cluster("regional", live=0), cluster("central", live=0))),
        (),
        ("unhealthy:regional", "unhealthy:central"),
        Failure.UNAVAILABLE,
    ),
    "down and over budget: the budget is what could not be met": Case(
        v2(budget=60.0),
        Snapshot({}, (cluster("regional", live=0), CENTRAL)),
        (),
        ("unhealthy:regional", "over_budget:central"),
        Failure.OVER_BUDGET,
    ),
    "offline with an upstream-only model": Case(
        v2(), Snapshot({}, (REGIONAL,), offline=True), (), ("offline",), Failure.OFFLINE
    ),
    "offline with a local model serves locally": Case(
        v2(), Snapshot(local(), (REGIONAL, CENTRAL), offline=True), ("local:m",)
    ),
    "offline and heavy: the upstream it needs is out of reach": Case(
        v2(),
        Snapshot(local(), (REGIONAL,), offline=True),
        (),
        ("heavy_model", "offline"),
        Failure.OFFLINE,
        rules=Rules(heavy_models=frozenset({"m"})),
    ),
    "offline before any discovery: an upstream may serve it": Case(
        v2(model="nope"),
        Snapshot({}, (cluster("regional", models=None),), offline=True),
        (),
        ("offline",),
        Failure.OFFLINE,
    ),
    "link down before any discovery: the cluster may serve it, so it is unavailable": Case(
        v2(model="nope"),
        Snapshot({}, (cluster("regional", models=None, live=0), CENTRAL)),
        (),
        ("unhealthy:regional",),
        Failure.UNAVAILABLE,
    ),
    "link down before any discovery, a model served here: served here": Case(
        v2(), Snapshot(local(), (cluster("regional", models=None, live=0),)), ("local:m",)
    ),
    "link down before any discovery, the request bound to the site: still unavailable": Case(
        oa(model="nope"),
        Snapshot({}, (cluster("regional", models=None, live=0),)),
        (),
        ("unhealthy:regional",),
        Failure.UNAVAILABLE,
        permitted=frozenset(),
    ),
    "undiscovered and live (its list is on its way): unknown for now": Case(
        v2(model="nope"),
        Snapshot({}, (cluster("regional", models=None),)),
        (),
        (),
        Failure.UNKNOWN_MODEL,
    ),
    "offline, only served where residency forbids: denied, not offline (a retry never helps)": Case(
        v2(),
        Snapshot({}, (REGIONAL, CENTRAL), offline=True),
        (),
        ("residency:regional", "residency:central"),
        Failure.RESIDENCY,
        permitted=frozenset(),
    ),
    "offline, served where residency allows: offline": Case(
        v2(),
        Snapshot({}, (REGIONAL, CENTRAL), offline=True),
        (),
        ("offline",),
        Failure.OFFLINE,
        permitted=frozenset({"central"}),
    ),
    "offline, forbidden where listed but a cluster never said: offline": Case(
        v2(),
        Snapshot({}, (REGIONAL, cluster("central", models=None)), offline=True),
        (),
        ("offline",),
        Failure.OFFLINE,
        permitted=frozenset(),
    ),
    "offline with a model nobody serves is unknown": Case(
        v2(model="nope"), Snapshot({}, (REGIONAL,), offline=True), (), (), Failure.UNKNOWN_MODEL
    ),
}


def _names(targets: tuple[Target, ...]) -> tuple[str, ...]:
    return tuple(f"local:{t.name}" if t.kind == "local" else t.name for t in targets)


class TestDecide:
    @pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
    def test_table(self, case: Case) -> None:
        """Each case yields exactly its targets, reasons and failure."""
        decision = decide(case.facts, case.rules, case.snapshot, permitted=case.permitted)
        assert _names(decision.targets) == case.targets
        assert decision.reasons == case.reasons
        assert decision.failure is case.failure

    def test_targets_carry_tier_and_expectation(self) -> None:
        """A target names its tier (the site's own for local) and the latency expected of it."""
        decision = decide(v2(), Rules(), Snapshot(local(expected=7.0), (CENTRAL,)), "regional")
        assert decision.targets == (
            Target("local", "m", "regional", 7.0),
            Target("cluster", "central", "central", 100.0),
        )

    def test_is_pure(self) -> None:
        """The same inputs give the same decision, and the inputs are not changed."""
        snapshot = Snapshot(local(), (CENTRAL, REGIONAL))
        first = decide(v2(), Rules(), snapshot)
        assert decide(v2(), Rules(), snapshot) == first
        assert snapshot.clusters == (CENTRAL, REGIONAL)
