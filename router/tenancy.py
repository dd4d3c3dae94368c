"""Who is asking: API keys, kept only as SHA-256 hashes, mapped to the tenants of the active
policy bundle (tenants.yaml), with each tenant's allowed models and rate limits.

A key is looked up by its hash in a dict. The comparison inside the lookup is not constant
time, and need not be: what it could leak is how a stored *hash* begins, and a hash of a
high-entropy key (`layer-router tenant new-key` makes 256-bit ones) reveals nothing usable
about any key. A hit is still confirmed with `hmac.compare_digest`, so that no shortcut of the
dict's own equality decides access alone."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from router.errors import ModelNotAllowed, Unauthorized
from router.policy.model import RateLimit, TenantDefaults, Tenants
from router.ratelimit import Limiter, Limiters

ANONYMOUS = "anonymous"  # requests without a key, where auth.mode is disabled
KEY_PREFIX = "sha256:"
MIN_KEY_LENGTH = 20  # shorter keys could be guessed from their unsalted hash


def hash_key(key: str) -> str:
    """The form tenants.yaml stores: `sha256:` and the hex digest of the key's UTF-8 bytes."""
    return KEY_PREFIX + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def presented_key(headers: Mapping[str, str]) -> str | None:
    """`Authorization: Bearer <key>`, else an `api-key` (Azure OpenAI) or `X-Api-Key` header."""
    return next((key for _, key in presented_keys(headers)), None)


def presented_keys(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every key the request presents, as (header name, key), in the order of precedence:
    `Authorization: Bearer <key>`, then `api-key` (Azure OpenAI), then `X-Api-Key`."""
    found = []
    auth = headers.get("Authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            found.append(("authorization", token))
    for name in ("api-key", "x-api-key"):
        value = headers.get(name)
        if value and value.strip():
            found.append((name, value.strip()))
    return found


@dataclass(frozen=True, slots=True)
class TenantAccess:
    name: str
    models: frozenset[str] | None  # exact names; None: every model
    globs: tuple[str, ...]
    limiter: Limiter | None

    def may_use(self, model: str) -> bool:
        if self.models is None or model in self.models:
            return True
        return any(fnmatchcase(model, glob) for glob in self.globs)


class Tenancy:
    """The tenants of one policy bundle, for one site's auth mode. Rebuilt when a bundle is
    activated; the buckets in `limiters` carry over."""

    def __init__(
        self,
        tenants: Tenants,
        *,
        required: bool,
        limiters: Limiters,
        upload_keys: frozenset[str] = frozenset(),
    ) -> None:
        """`upload_keys`: hashes of sites' upload keys for this collector. A key is one or the
        other: one listed there never names a tenant, whatever tenants.yaml says (so no site
        can call the API with the key it uploads with, nor a tenant upload as a site)."""
        self.required = required
        policies: dict[str, TenantDefaults] = dict(tenants.tenants)
        if not required:
            policies[ANONYMOUS] = TenantDefaults()
        limits = {name: _limits(policy, tenants.default) for name, policy in policies.items()}
        buckets = limiters.for_tenants({n: lim for n, lim in limits.items() if lim})
        self.by_name = {
            name: _access(name, policy, tenants.default, buckets.get(name))
            for name, policy in policies.items()
        }
        self._by_hash = {
            key: (key, self.by_name[name])
            for name, t in tenants.tenants.items()
            for key in t.keys
            if key not in upload_keys
        }
        # Named (never the key or its hash) so the operator can give the tenant a key of its own.
        self.holding_upload_keys = sorted(
            name for name, t in tenants.tenants.items() if not upload_keys.isdisjoint(t.keys)
        )
        self._anonymous = self.by_name.get(ANONYMOUS)

    @property
    def has_keys(self) -> bool:
        return bool(self._by_hash)

    def identify(self, headers: Mapping[str, str]) -> TenantAccess:
        """The asking tenant; 401 when a key is required and none of the bundle's matches.
        Without required auth a key no tenant holds is not an error: it may be a credential
        meant for an upstream (`forward_authorization`)."""
        return self.identify_with_header(headers)[0]

    def identify_with_header(self, headers: Mapping[str, str]) -> tuple[TenantAccess, str | None]:
        """The asking tenant and the header (lower case) that carried its key: that header
        is this router's credential and never goes upstream. A key in one header may sit
        beside an upstream's credential in another (`Authorization` for the upstream,
        `api-key` for this router): the first header holding a tenant's key names it."""
        if not self._by_hash and self._anonymous is not None:
            return self._anonymous, None  # no keys anywhere: nothing to look for
        presented = presented_keys(headers)
        for header, key in presented:
            hashed = hash_key(key)
            found = self._by_hash.get(hashed)
            if found is not None and hmac.compare_digest(hashed, found[0]):
                return found[1], header
        if self._anonymous is not None:
            return self._anonymous, None
        if not presented:
            raise Unauthorized(
                "an API key is required: send 'Authorization: Bearer <key>' or 'api-key: <key>'"
            )
        raise Unauthorized("the API key is not valid")

    def may_use(self, tenant: str, model: str) -> bool:
        access = self.by_name.get(tenant)
        return access is None or access.may_use(model)

    def authorize(self, tenant: str, model: str) -> None:
        if not self.may_use(tenant, model):
            raise ModelNotAllowed(f"model '{model}' is not available to this tenant")


def _limits(policy: TenantDefaults, default: TenantDefaults) -> tuple[RateLimit, ...]:
    chosen = policy.rate_limits if policy.rate_limits is not None else default.rate_limits
    return tuple(chosen or ())


def _access(
    name: str, policy: TenantDefaults, default: TenantDefaults, limiter: Limiter | None
) -> TenantAccess:
    models = policy.models if policy.models is not None else default.models
    if models is None:
        return TenantAccess(name, None, (), limiter)
    exact = frozenset(m for m in models if not _is_glob(m))
    globs = tuple(m for m in models if _is_glob(m))
    return TenantAccess(name, exact, globs, limiter)


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")
