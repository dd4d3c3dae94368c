"""The schema of a policy bundle: one pydantic model per file, validated like site config
(unknown keys and bad values are errors naming file and key)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from router.redaction.types import Action
from router.yamlconf import Strict

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
TIERS = ("edge", "regional", "central")
ROUTES = ("kserve-v2", "openai")  # the APIs requests come in on


class Manifest(Strict):
    name: Name
    revision: Annotated[str, Field(min_length=1, max_length=128)]
    # Orders bundles for the rollback guard (router/policy/highwater.py): a site never
    # activates a lower serial than one it has run. Absent: 0, an unversioned bundle.
    serial: Annotated[int, Field(ge=0, le=2**63 - 1, strict=True)] = 0
    description: str = ""

    @field_validator("revision")
    @classmethod
    def _fits_a_header(cls, value: str) -> str:
        # It is sent as X-Policy-Revision: a line break there made every answer fail.
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
            raise ValueError("holds a control character (a line break?): it is sent in a header")
        return value


class DataClasses(Strict):
    classes: Annotated[tuple[Name, ...], Field(min_length=1)]
    default: Name
    entities: dict[str, Name] = {}
    # That `default` and the entities' classes are among `classes` is checked with the rest of
    # the bundle (router/policy/bundle.py), where the error can name the key.

    def rank(self, data_class: str) -> int:
        return self.classes.index(data_class)


class CustomPatternRule(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]
    pattern: Annotated[str, Field(min_length=1, max_length=1000)]
    data_class: Name


class Detection(Strict):
    max_body_bytes: Annotated[int, Field(gt=0)] = 4 * 1024 * 1024
    cpu_deadline_ms: Annotated[float, Field(gt=0)] = 200.0
    headers: tuple[str, ...] = ()
    query: bool = True
    fail_open_paths: tuple[str, ...] = ()
    custom: tuple[CustomPatternRule, ...] = ()

    @field_validator("headers")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(h.lower() for h in value)

    @field_validator("fail_open_paths")
    @classmethod
    def _paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # A request path starts with "/": "v2/models/x" would match nothing, and "" every
        # path (each starts with it), turning every route's detection failure open.
        for route in value:
            if not route.startswith("/"):
                raise ValueError(f"{route!r} is no path: a route starts with '/' (\"/\" is all)")
        return value


class TierRedaction(Strict):
    default: Action = Action.TOKENIZE
    entities: dict[str, Action] = {}
    paths: dict[str, Action] = {}  # glob field paths with their own action, e.g. user: drop


class Redaction(Strict):
    tiers: dict[str, TierRedaction]
    drop_fields: tuple[str, ...] = ()

    @field_validator("tiers")
    @classmethod
    def _tier_names(cls, value: dict[str, TierRedaction]) -> dict[str, TierRedaction]:
        unknown = set(value) - set(TIERS)
        if unknown:
            raise ValueError(f"unknown tier {sorted(unknown)[0]!r}; known: {TIERS}")
        return value


class ResidencyRule(Strict):
    data_class: Name | tuple[Name, ...]
    tiers: tuple[str, ...] = TIERS
    jurisdictions: tuple[str, ...] = ("any",)  # "any", "same" (the origin's) or names
    # "any", or the hosts of the endpoints allowed, as shell-style globs ("*.eu.example.com")
    endpoints: tuple[Annotated[str, Field(min_length=1)], ...] = ("any",)
    once_redacted_to: Name | None = None

    @field_validator("endpoints")
    @classmethod
    def _hosts_compare_in_lower_case(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(host.lower() for host in value)

    @property
    def classes(self) -> tuple[str, ...]:
        return (self.data_class,) if isinstance(self.data_class, str) else self.data_class


class Residency(Strict):
    rules: tuple[ResidencyRule, ...] = ()


class Budgets(Strict):
    routes: dict[str, Annotated[int, Field(gt=0)]] = {}
    models: dict[str, Annotated[int, Field(gt=0)]] = {}

    @field_validator("routes")
    @classmethod
    def _known_routes(cls, value: dict[str, int]) -> dict[str, int]:
        # By the API a request came in on: any other name would be ignored, unseen.
        unknown = sorted(set(value) - set(ROUTES))
        if unknown:
            raise ValueError(f"unknown route {unknown[0]!r}; known: {', '.join(ROUTES)}")
        return value


class Sampling(Strict):
    """Share of answers spooled (desensitized) for the central tier, per model."""

    default: Annotated[float, Field(ge=0, le=1)] = 0.0
    models: dict[str, Annotated[float, Field(ge=0, le=1)]] = {}

    def rate(self, model: str) -> float:
        return self.models.get(model, self.default)


class CachePolicy(Strict):
    # Requests of a stricter class are never cached (even in the tenant's own scope).
    max_data_class: Name = "internal"


# `sha256:` and the hex SHA-256 of an API key (`layer-router tenant hash-key` makes one).
KeyHash = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]


class RateLimit(Strict):
    """A token bucket: `requests` per `period_s`, refilled evenly, holding at most `burst`
    (default: `requests`). A per-minute rate and a per-day quota are two of these."""

    requests: Annotated[int, Field(gt=0)]
    period_s: Annotated[float, Field(gt=0)] = 60.0
    burst: Annotated[int, Field(gt=0)] | None = None


class TenantDefaults(Strict):
    """What a tenant may do; a field a tenant leaves unset takes `default`'s value."""

    data_class: Name | None = None
    # Model names or fnmatch globs ("color_*") this tenant may use; None: every model.
    models: tuple[str, ...] | None = None
    rate_limits: tuple[RateLimit, ...] | None = None


class Tenant(TenantDefaults):
    keys: tuple[KeyHash, ...] = ()


class Tenants(Strict):
    # Every tenant's fallback, and the anonymous tenant when authentication is disabled.
    default: TenantDefaults = TenantDefaults()
    tenants: dict[Name, Tenant] = {}

    def data_class_of(self, tenant: str) -> str | None:
        own = self.tenants.get(tenant)
        if own is not None and own.data_class is not None:
            return own.data_class
        return self.default.data_class

    @model_validator(mode="after")
    def _keys_unique(self) -> Tenants:
        owner: dict[str, str] = {}
        for name, tenant in self.tenants.items():
            for key in tenant.keys:
                if key in owner:
                    raise ValueError(f"tenants {owner[key]} and {name} hold the same key hash")
                owner[key] = name
        if "anonymous" in self.tenants:
            raise ValueError("'anonymous' names requests without a key; pick another name")
        return self


class VersionPins(Strict):
    """Per tier, per model: the only versions that tier may serve (a model not listed is not
    pinned). Guards against compliance drift: an upstream reporting another version, or not
    reporting one, gets no request for that model."""

    tiers: dict[str, dict[str, tuple[Annotated[str, Field(min_length=1)], ...]]] = {}

    @field_validator("tiers")
    @classmethod
    def _tier_names(
        cls, value: dict[str, dict[str, tuple[str, ...]]]
    ) -> dict[str, dict[str, tuple[str, ...]]]:
        unknown = set(value) - set(TIERS)
        if unknown:
            raise ValueError(f"unknown tier {sorted(unknown)[0]!r}; known: {TIERS}")
        return value

    def allowed(self, tier: str, model: str) -> frozenset[str] | None:
        """The versions `tier` may serve of `model`; None when the model is not pinned."""
        versions = self.tiers.get(tier, {}).get(model)
        return None if versions is None else frozenset(versions)
