"""Version pinning against compliance drift: a bundle may name the versions of a model each
tier may serve (versions.yaml). A cluster gets a request for a pinned model only when every
version it reports serving is allowed.

What counts as reported: the versions in a kserve-v2 cluster's repository index (Triton's
extension; discovery reads it). An OpenAI-protocol cluster's `/v1/models` has no versions, and
a statically configured cluster reports none either: for a pinned model such a cluster is
treated as drifted (unverifiable is not compliant) and is never chosen; unpinned models are
unaffected."""

from __future__ import annotations

from typing import Any

from router.inference.repository import ModelRepository
from router.policy.bundle import PolicyBundle
from router.upstreams.cluster import Cluster
from router.upstreams.registry import Upstreams


def compliant(bundle: PolicyBundle, cluster: Cluster, model: str) -> bool:
    allowed = bundle.versions.allowed(cluster.settings.tier.value, model)
    if allowed is None:
        return True
    reported = cluster.versions.get(model, frozenset())
    return bool(reported) and reported <= allowed


def drift_report(
    bundle: PolicyBundle, upstreams: Upstreams, models: ModelRepository, site_tier: str
) -> list[dict[str, Any]]:
    """Every pinned model served (by a cluster, or by this site's own repository) at versions
    other than its tier allows, or with versions unknown."""
    drift = []
    for cluster in upstreams.clusters.values():
        tier = cluster.settings.tier.value
        for model in sorted(cluster.models or ()):
            allowed = bundle.versions.allowed(tier, model)
            if allowed is None or compliant(bundle, cluster, model):
                continue
            reported = cluster.versions.get(model, frozenset())
            drift.append(_item(model, tier, cluster.name, allowed, reported))
    return drift + _local_drift(bundle, models, site_tier)


def _local_drift(bundle: PolicyBundle, models: ModelRepository, tier: str) -> list[dict[str, Any]]:
    """Reported only: this site's own models are what its operator deployed here."""
    drift = []
    for name, model in sorted(models.models.items()):
        allowed = bundle.versions.allowed(tier, name)
        served = frozenset(str(v) for v, e in model.versions.items() if e.ready)
        if allowed is not None and served and not served <= allowed:
            drift.append(_item(name, tier, "local", allowed, served))
    return drift


def _item(
    model: str, tier: str, where: str, allowed: frozenset[str], reported: frozenset[str]
) -> dict[str, Any]:
    return {
        "model": model,
        "tier": tier,
        "served_by": where,
        "allowed": sorted(allowed),
        "reported": sorted(reported),
        "outside": sorted(reported - allowed) if reported else ["unknown"],
    }
