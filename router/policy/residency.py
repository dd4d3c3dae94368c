"""Residency: which tiers, jurisdictions and endpoints a request may reach, given its data
class, what redaction for that tier would leave of it, and where it comes from. Pure functions.

A request's class only rises: tenant default < X-Data-Class header < what detection found.
What redaction can lower is only what detection found: a class declared by the tenant or the
caller stands, since nobody can know what made the caller call it sensitive.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from router.policy.bundle import PolicyBundle
from router.policy.model import ResidencyRule, TierRedaction
from router.redaction.types import Action

LOCAL_TIER = "edge"


def strictest(bundle: PolicyBundle, classes: Iterable[str]) -> str:
    ranked = bundle.data_classes.classes
    return max(classes, key=ranked.index, default=bundle.data_classes.default)


def classify(bundle: PolicyBundle, declared: str, entities: Iterable[str]) -> str:
    return strictest(bundle, [declared, *(bundle.entity_class(e) for e in entities)])


def residual(bundle: PolicyBundle, declared: str, entities: Iterable[str], tier: str) -> str:
    """The class of what is left after the tier's redaction: what it keeps still counts."""
    plan = bundle.tier_redaction(tier)
    kept = [e for e in entities if _may_keep(plan, e)]
    return classify(bundle, declared, kept)


def _may_keep(plan: TierRedaction, entity: str) -> bool:
    """Whether the tier's view may still hold `entity` somewhere: an entity the tier names
    has that action everywhere; any other takes the default, or a field path's own action
    (`paths`) under that path, so one path that keeps is enough."""
    named = plan.entities.get(entity)
    if named is not None:
        return named is Action.KEEP
    return plan.default is Action.KEEP or Action.KEEP in plan.paths.values()


def permits(
    bundle: PolicyBundle,
    *,
    declared: str,
    entities: frozenset[str],
    tier: str,
    jurisdictions: frozenset[str],
    origin: str,
    hosts: frozenset[str] = frozenset(),
) -> bool:
    """May this request go to `tier`, to endpoints in `jurisdictions` on `hosts` (all of them
    must pass: any one may get the request)? Edge-tier targets are on the site itself: the data
    does not leave, so they always may."""
    if tier == LOCAL_TIER:
        return True
    data_class = classify(bundle, declared, entities)
    rule = _rule_for(bundle, data_class)
    if rule is None:
        return False  # no rule lets it leave the site
    if tier not in rule.tiers:
        return False
    if not all(_jurisdiction_ok(rule, j, origin) for j in jurisdictions or {""}):
        return False
    if "any" not in rule.endpoints and not all(_host_ok(rule, h) for h in hosts or {""}):
        return False
    if rule.once_redacted_to is None:
        return True
    left = residual(bundle, declared, entities, tier)
    ranked = bundle.data_classes.classes
    return ranked.index(left) <= ranked.index(rule.once_redacted_to)


def _rule_for(bundle: PolicyBundle, data_class: str) -> ResidencyRule | None:
    return next((r for r in bundle.residency.rules if data_class in r.classes), None)


def _jurisdiction_ok(rule: ResidencyRule, jurisdiction: str, origin: str) -> bool:
    allowed = rule.jurisdictions
    if "any" in allowed or jurisdiction in allowed:
        return True
    return "same" in allowed and jurisdiction == origin


def _host_ok(rule: ResidencyRule, host: str) -> bool:
    return any(fnmatchcase(host, pattern) for pattern in rule.endpoints)
