"""Load a policy bundle from its folder: one YAML file per concern plus a manifest with the
revision. Every file but the manifest is optional; cross-file references are checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from router import yamlconf
from router.errors import ConfigError
from router.policy.model import (
    TIERS,
    Budgets,
    CachePolicy,
    CustomPatternRule,
    DataClasses,
    Detection,
    Manifest,
    Redaction,
    Residency,
    Sampling,
    Tenants,
    TierRedaction,
    VersionPins,
)
from router.redaction.types import Action, Entity

M = TypeVar("M", bound=BaseModel)

DEFAULT_DATA_CLASSES = DataClasses(classes=("public", "internal"), default="internal")
DEFAULT_REDACTION = Redaction(tiers={tier: TierRedaction() for tier in TIERS})


@dataclass(frozen=True, slots=True)
class PolicyBundle:
    path: Path
    manifest: Manifest
    data_classes: DataClasses
    detection: Detection
    redaction: Redaction
    residency: Residency
    budgets: Budgets
    tenants: Tenants
    cache: CachePolicy
    sampling: Sampling
    versions: VersionPins

    @property
    def revision(self) -> str:
        return self.manifest.revision

    def tier_redaction(self, tier: str) -> TierRedaction:
        # A tier the bundle does not mention gets the strictest treatment: tokenize everything.
        return self.redaction.tiers.get(tier) or TierRedaction(default=Action.TOKENIZE)

    def entity_class(self, entity: str) -> str:
        for rule in self.detection.custom:
            if rule.name == entity:
                return rule.data_class
        return self.data_classes.entities.get(entity, self.data_classes.classes[-1])


def load_bundle(path: Path) -> PolicyBundle:
    if not (path / "manifest.yaml").is_file():
        raise ConfigError(str(path), ["not a policy bundle: manifest.yaml is missing"])
    bundle = PolicyBundle(
        path=path,
        manifest=yamlconf.load(path / "manifest.yaml", Manifest),
        data_classes=_optional(path, "data_classes.yaml", DataClasses, DEFAULT_DATA_CLASSES),
        detection=_optional(path, "detection.yaml", Detection, Detection()),
        redaction=_optional(path, "redaction.yaml", Redaction, DEFAULT_REDACTION),
        residency=_optional(path, "residency.yaml", Residency, Residency()),
        budgets=_optional(path, "budgets.yaml", Budgets, Budgets()),
        tenants=_optional(path, "tenants.yaml", Tenants, Tenants()),
        cache=_optional(path, "cache.yaml", CachePolicy, CachePolicy()),
        sampling=_optional(path, "sampling.yaml", Sampling, Sampling()),
        versions=_optional(path, "versions.yaml", VersionPins, VersionPins()),
    )
    problems = _cross_check(bundle)
    if problems:
        raise ConfigError(str(path), problems)
    return bundle


def _optional(path: Path, name: str, model: type[M], default: M) -> M:
    file = path / name
    return yamlconf.load(file, model) if file.exists() else default


def _cross_check(bundle: PolicyBundle) -> list[str]:
    classes = set(bundle.data_classes.classes)
    entities = {e.value for e in Entity} | {c.name for c in bundle.detection.custom}
    problems = _data_class_problems(bundle.data_classes)
    for i, rule in enumerate(bundle.residency.rules):
        for name in (*rule.classes, rule.once_redacted_to):
            if name is not None and name not in classes:
                problems.append(f"residency.yaml: rules.{i}: unknown data class {name!r}")
        for tier in rule.tiers:
            if tier not in TIERS:
                problems.append(f"residency.yaml: rules.{i}.tiers: unknown tier {tier!r}")
    problems += _custom_name_problems(bundle.detection.custom)
    for custom in bundle.detection.custom:
        if custom.data_class not in classes:
            problems.append(f"detection.yaml: custom.{custom.name}: unknown data class")
        listed = bundle.data_classes.entities.get(custom.name, custom.data_class)
        if listed != custom.data_class:  # entity_class() would take the pattern's, unseen
            problems.append(
                f"data_classes.yaml: entities.{custom.name}: {listed!r}, but detection.yaml's "
                f"custom pattern {custom.name} says {custom.data_class!r}: keep one"
            )
    for tier, plan in bundle.redaction.tiers.items():
        for entity in plan.entities:
            if entity not in entities:
                problems.append(f"redaction.yaml: tiers.{tier}.entities: unknown entity {entity!r}")
    tenants: dict[str, Any] = {"default": bundle.tenants.default, **bundle.tenants.tenants}
    for name, tenant in tenants.items():
        if tenant.data_class is not None and tenant.data_class not in classes:
            problems.append(f"tenants.yaml: {name}: unknown data class {tenant.data_class!r}")
    if bundle.cache.max_data_class not in classes:
        problems.append(
            f"cache.yaml: max_data_class: unknown data class {bundle.cache.max_data_class!r}"
        )
    for entity in bundle.data_classes.entities:
        if entity not in entities:
            problems.append(f"data_classes.yaml: entities: unknown entity {entity!r}")
    return problems


def _custom_name_problems(custom: tuple[CustomPatternRule, ...]) -> list[str]:
    """A custom pattern's name is the entity its matches are: one named twice, or after a
    built-in entity, would give every match the first rule's class (entity_class)."""
    builtin = {e.value for e in Entity}
    problems, seen = [], set()
    for i, rule in enumerate(custom):
        if rule.name in builtin:
            problems.append(
                f"detection.yaml: custom.{i}.name: {rule.name!r} is a built-in entity (its "
                "class is data_classes.yaml's entities); name the pattern otherwise"
            )
        elif rule.name in seen:
            problems.append(f"detection.yaml: custom.{i}.name: {rule.name!r} is listed twice")
        seen.add(rule.name)
    return problems


def _data_class_problems(data_classes: DataClasses) -> list[str]:
    """Classes listed twice (their order is their strictness), and unknown ones named."""
    problems, seen, lowered = [], set(), set()
    for name in data_classes.classes:
        if name.lower() in lowered:  # headers name classes in any case: PII and pii are one
            problems.append(f"data_classes.yaml: classes: {name!r} is listed twice")
        seen.add(name)
        lowered.add(name.lower())
    if data_classes.default not in seen:
        problems.append(f"data_classes.yaml: default: unknown data class {data_classes.default!r}")
    for entity, name in data_classes.entities.items():
        if name not in seen:
            problems.append(f"data_classes.yaml: entities.{entity}: unknown data class {name!r}")
    return problems
