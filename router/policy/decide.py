"""decide(facts, rules, snapshot) -> Decision: where a request may go, in fallback order.

Local first when the model is here, not marked heavy and fits the budget; then site-local (edge)
clusters, regional, central, each only if it serves the model, has a live endpoint and its
expected latency fits the remaining budget. When nothing qualifies the decision carries a
failure code instead of targets, so the caller fails fast rather than waiting for a timeout.

`reasons` explain what was passed over (heavy_model, over_budget:NAME, unhealthy:NAME, ...) or
put last (auth_cooloff:NAME);
the dispatcher adds what was used (local, forward:NAME, fallback:NAME, failed:NAME:CODE). Reason
codes are stable strings, returned to clients in `X-Route-Reason`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

TIER_ORDER = ("edge", "regional", "central")


class Failure(StrEnum):
    UNKNOWN_MODEL = "model_not_found"  # nobody serves it: 404
    OVER_BUDGET = "budget_unmeetable"  # someone serves it, but not within the budget: 504
    UNAVAILABLE = "no_healthy_target"  # someone serves it, but nothing is up: 503
    OFFLINE = "offline"  # upstream needed while the site runs local-only: 503
    RESIDENCY = "no_compliant_target"  # served only where this request may not go: 403


@dataclass(frozen=True, slots=True)
class Facts:
    api: str  # "kserve-v2" | "openai"
    model: str
    budget_ms: float  # what remains of the client's latency budget
    payload_bytes: int = 0


@dataclass(frozen=True, slots=True)
class LocalView:
    ready: bool
    expected_ms: float


@dataclass(frozen=True, slots=True)
class ClusterView:
    name: str
    tier: str
    protocols: frozenset[str]
    models: frozenset[str] | None  # None: not discovered yet (assumed to serve nothing)
    live_endpoints: int
    expected_ms: float
    jurisdictions: frozenset[str] = frozenset()
    hosts: frozenset[str] = frozenset()
    # The cluster refused the router's own credential lately (a cool-off): it is tried only
    # after every other target, so each request does not pay its refusal before a fallback.
    auth_cooloff: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    local: Mapping[str, LocalView]
    clusters: tuple[ClusterView, ...]
    offline: bool = False


@dataclass(frozen=True, slots=True)
class Rules:
    heavy_models: frozenset[str] = frozenset()
    local_max_payload_bytes: int = 1 << 62


@dataclass(frozen=True, slots=True)
class Target:
    kind: str  # "local" | "cluster"
    name: str  # model name for local, cluster name otherwise
    tier: str
    expected_ms: float


@dataclass(frozen=True, slots=True)
class Decision:
    targets: tuple[Target, ...]
    reasons: tuple[str, ...]
    failure: Failure | None = None


@dataclass(slots=True)
class _Draft:
    targets: list[Target] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    served_somewhere: bool = False
    over_budget: bool = False
    blocked: bool = False  # a cluster serves it, but residency forbids going there
    reachable: bool = False  # a permitted cluster serves it


def decide(
    facts: Facts,
    rules: Rules,
    snapshot: Snapshot,
    local_tier: str = "edge",
    permitted: frozenset[str] | None = None,
) -> Decision:
    """`permitted`: the clusters residency lets this request reach (None: all of them). Every
    target passes through it, fallbacks included: no panic mode crosses a residency line."""
    draft = _Draft()
    _consider_local(facts, rules, snapshot, local_tier, draft)
    if snapshot.offline:
        if not draft.targets and _any_cluster_may_serve(facts, snapshot, permitted):
            draft.reasons.append("offline")
            return Decision((), tuple(draft.reasons), Failure.OFFLINE)
        if not draft.targets and _any_cluster_may_serve(facts, snapshot):
            # Only clusters residency forbids serve it: online or not, it may not go there,
            # and a 503 with Retry-After would have the client try again for ever.
            for cluster in _by_tier(snapshot.clusters):
                _consider_cluster(facts, cluster, draft, permitted)
            return Decision((), tuple(draft.reasons), Failure.RESIDENCY)
    else:
        for cluster in _by_tier(snapshot.clusters):
            _consider_cluster(facts, cluster, draft, permitted)
        if not draft.served_somewhere:
            _consider_unlisted(facts, snapshot, draft)
    return Decision(tuple(draft.targets), tuple(draft.reasons), _failure(draft))


def _consider_local(
    facts: Facts, rules: Rules, snapshot: Snapshot, local_tier: str, draft: _Draft
) -> None:
    view = snapshot.local.get(facts.model) if facts.api == "kserve-v2" else None
    if view is None:
        return
    draft.served_somewhere = True
    if facts.model in rules.heavy_models:
        draft.reasons.append("heavy_model")
    elif facts.payload_bytes > rules.local_max_payload_bytes:
        draft.reasons.append("payload_too_large_for_local")
    elif not view.ready:
        draft.reasons.append("local_not_ready")
    elif view.expected_ms > facts.budget_ms:
        draft.over_budget = True
        draft.reasons.append("local_over_budget")
    else:
        draft.targets.append(Target("local", facts.model, local_tier, view.expected_ms))


def _consider_cluster(
    facts: Facts, cluster: ClusterView, draft: _Draft, permitted: frozenset[str] | None
) -> None:
    if facts.api not in cluster.protocols:
        return
    if cluster.models is None or facts.model not in cluster.models:
        return
    draft.served_somewhere = True
    if permitted is not None and cluster.name not in permitted:
        draft.blocked = True
        draft.reasons.append(f"residency:{cluster.name}")
        return
    draft.reachable = True
    if cluster.live_endpoints == 0:
        draft.reasons.append(f"unhealthy:{cluster.name}")
    elif cluster.expected_ms > facts.budget_ms:
        draft.over_budget = True
        draft.reasons.append(f"over_budget:{cluster.name}")
    else:
        if cluster.auth_cooloff:
            draft.reasons.append(f"auth_cooloff:{cluster.name}")
        draft.targets.append(Target("cluster", cluster.name, cluster.tier, cluster.expected_ms))


def _consider_unlisted(facts: Facts, snapshot: Snapshot, draft: _Draft) -> None:
    """A model no one is known to serve, while a cluster was never reached to say what it
    serves (the site started with its link down): that cluster may serve it, so the answer is
    that it is down (503 offline, as with `--offline`), not "unknown model" (404). Residency
    is judged once it answers (a request bound to the site is not even scanned before)."""
    for cluster in _by_tier(snapshot.clusters):
        unlisted = facts.api in cluster.protocols and cluster.models is None
        if unlisted and cluster.live_endpoints == 0:
            draft.served_somewhere = draft.reachable = True
            draft.reasons.append(f"unhealthy:{cluster.name}")


def _any_cluster_may_serve(
    facts: Facts, snapshot: Snapshot, permitted: frozenset[str] | None = None
) -> bool:
    """A cluster serves the model, or was never reached to say what it serves (a site started
    offline): then the answer is "offline", not "unknown model". With `permitted`, only a
    cluster residency allows counts, or one never reached (residency is judged once it
    answers what it serves)."""
    return any(
        facts.api in c.protocols
        and (
            c.models is None
            or (facts.model in c.models and (permitted is None or c.name in permitted))
        )
        for c in snapshot.clusters
    )


def _by_tier(clusters: tuple[ClusterView, ...]) -> list[ClusterView]:
    """Nearest tier first, fastest first within a tier; a cluster cooling off after refusing
    the router's credential comes last (still a last resort: when everything else fails, its
    refusal is the clearest answer, and a key fixed meanwhile is found at once)."""
    return sorted(
        clusters, key=lambda c: (c.auth_cooloff, TIER_ORDER.index(c.tier), c.expected_ms, c.name)
    )


def _failure(draft: _Draft) -> Failure | None:
    if draft.targets:
        return None
    if not draft.served_somewhere:
        return Failure.UNKNOWN_MODEL
    if draft.blocked and not draft.reachable and not draft.over_budget:
        return Failure.RESIDENCY
    if draft.over_budget:
        return Failure.OVER_BUDGET
    return Failure.UNAVAILABLE
