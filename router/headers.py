"""Header hygiene at the proxy boundary (RFC 9110 §7.6.1) and the headers we own."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping

REQUEST_ID = "X-Request-Id"
HOPS = "X-Layer-Router-Hops"  # loop guard between routers; internal prefix, so never forwarded
MAX_HOPS = 8
# What the previous router knew of a request's data, so the next one applies the same residency
# rule (both only ever raise strictness, so a client sending them gains nothing): the class the
# request started from, and the entity types detection found (values never travel).
DECLARED_CLASS = "X-Layer-Router-Declared-Class"
FOUND_ENTITIES = "X-Layer-Router-Found"
# The tenant this router resolved: a router behind it gets every one of this router's tenants
# under the same credential, and keeps their cached answers apart by it (it only narrows a
# cache entry's scope, so a client sending it gains nothing).
TENANT = "X-Layer-Router-Tenant"
# On a 503 to GET /v2/health/ready: the only cause is models that failed to load (strict
# readiness, as Triton's, for a Kubernetes probe). A router in front keeps the endpoint as a
# route for the models that did load, which the repository index says.
UNREADY = "X-Layer-Router-Unready"
UNREADY_MODELS = "models"
TRACEPARENT = "traceparent"

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Recomputed or owned by the transport on each hop.
FRAMING = frozenset({"host", "content-length", "content-encoding", "expect", "accept-encoding"})
# Set by us on every forwarded request; a client's copy must not ride along (or be doubled).
REISSUED = frozenset(
    {
        "x-request-id",
        "traceparent",
        "x-latency-budget-ms",
        "content-type",
        "inference-header-content-length",
    }
)
# Ours: a client must never be able to set them for us, and an upstream's are re-issued.
INTERNAL = frozenset(
    {
        "x-served-by-tier",
        "x-route-reason",
        "x-cache",
        "x-audit-id",
        "x-redactions",
        "x-policy-revision",
        "server-timing",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        # The end user's address as CDNs and load balancers pass it on: personal data that
        # no upstream tier needs (as with X-Forwarded-For).
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "x-data-class-verified",
    }
)
# The client's credentials (a tenant's key for this router; a session cookie for the site that
# fronts it) go upstream only when a cluster says so (`forward_authorization`).
CREDENTIALS = frozenset({"authorization", "api-key", "x-api-key", "cookie"})
# Sent upstream only with the client's own credentials, never beside a key of the router's.
# The account an OpenAI key bills (the openai SDKs send them from OPENAI_ORG_ID and
# OPENAI_PROJECT_ID): the client's, which a key of the router's does not belong to (OpenAI
# answers that key 401 mismatched_organization, as if it were wrong). The client's cookies:
# a session with what fronts this router (an SSO proxy's, say), which no upstream issued.
WITH_CREDENTIALS = frozenset({"openai-organization", "openai-project", "cookie"})
# Dropped from every forwarded request and every relayed response: the per-request parts
# (Connection-named headers, the cluster's own) are added only when there are any.
_NEVER_UPSTREAM = HOP_BY_HOP | FRAMING | INTERNAL | REISSUED
_RESPONSE_ONLY = frozenset({"server", "date", "content-type", "x-request-id", "set-cookie"})
_NEVER_DOWNSTREAM = HOP_BY_HOP | FRAMING | INTERNAL | _RESPONSE_ONLY
# The response fields the router reads back from a reply's headers (a plain dict: the cache,
# coalescing, relaying), kept under one spelling whatever the upstream's (`cache-control`).
_READ_BACK = {name.lower(): name for name in ("Cache-Control", "Expires", "Vary", "Age")}
_INTERNAL_PREFIX = "x-layer-router-"
# Any version's first four fields; what may follow them depends on the version (W3C §3.2.4).
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
TRACESTATE = "tracestate"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _connection_named(headers: Mapping[str, str]) -> set[str]:
    named: set[str] = set()
    for value in _all(headers, "connection"):
        named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return named


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    value = headers.get(name)
    return [value] if value is not None else []


def goes_upstream(name: str) -> bool:
    """Whether a client's header of this name may reach an upstream as the client sent it (a
    credential only where a cluster forwards them, and then untouched)."""
    lower = name.lower()
    return not (
        lower in _NEVER_UPSTREAM or lower in CREDENTIALS or lower.startswith(_INTERNAL_PREFIX)
    )


def upstream_request_headers(
    client: Mapping[str, str],
    *,
    forward_authorization: bool,
    extra: Mapping[str, str],
    key_header: str | None = None,
) -> dict[str, str]:
    """What an upstream may see of the client's headers, plus the cluster's own.
    `key_header` held the client's key for this router (a tenant's): never forwarded, even
    where the cluster forwards the client's credentials for the upstream."""
    # The cluster's value replaces the client's: a client must not add a second one in other case.
    also = _connection_named(client) | {name.lower() for name in extra}
    if not forward_authorization:
        also |= CREDENTIALS | WITH_CREDENTIALS
    else:
        if key_header is not None:
            also.add(key_header)
        if any(name.lower() in CREDENTIALS for name in extra):  # the cluster's own goes instead
            also |= WITH_CREDENTIALS
    out = _kept(client, _NEVER_UPSTREAM | also if also else _NEVER_UPSTREAM)
    out.update(extra)
    return out


def _kept(
    headers: Mapping[str, str],
    dropped: frozenset[str] | set[str],
    spelled: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The fields neither `dropped` nor internal, a repeated field's lines joined into one
    list (RFC 9110 §5.3) under its first spelling (or the one `spelled` gives, by lower-case
    name): a dict keeps one value per name, and the earlier lines would be lost."""
    out: dict[str, str] = {}
    names: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in dropped or lower.startswith(_INTERNAL_PREFIX):
            continue
        first = names.setdefault(lower, spelled.get(lower, name) if spelled else name)
        if first not in out:
            out[first] = value
        else:  # Cookie's list separator is its own (RFC 9113 §8.2.3)
            out[first] += ("; " if lower == "cookie" else ", ") + value
    return out


def downstream_response_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    """What the client may see of an upstream's response headers (ours are added after).
    A header sent on several lines becomes one comma-separated value (RFC 9110 §5.3), so
    `Cache-Control: max-age=60` and `Cache-Control: private` stay one private answer. The
    fields the router reads back have one spelling: an upstream's `cache-control: no-store`
    is one the cache must hear."""
    named = _connection_named(upstream)
    dropped = _NEVER_DOWNSTREAM | named if named else _NEVER_DOWNSTREAM
    return _kept(upstream, dropped, _READ_BACK)


def hops(client: Mapping[str, str]) -> int:
    """How many layer-routers this request passed already (0 from an ordinary client)."""
    raw = client.get(HOPS, "0")
    return int(raw) if raw.isascii() and raw.isdecimal() and len(raw) < 4 else MAX_HOPS + 1


def request_id(client: Mapping[str, str]) -> str:
    """The client's X-Request-Id when it is well-formed, else a fresh one."""
    given = client.get(REQUEST_ID)
    if given is not None and _REQUEST_ID.match(given):
        return given
    return _hex(128)


def callers_trace(client: Mapping[str, str]) -> tuple[str, str] | None:
    """The caller's trace id and flags from a valid W3C traceparent, else None. A version we
    do not know is read by its version-00 fields, as the spec asks (§3.2.4, forward
    compatibility); version ff, a 00 with more fields, and all-zero ids are invalid."""
    given = client.get(TRACEPARENT)
    match = _TRACEPARENT.match(given.strip()) if given else None
    if match is None:
        return None
    version, trace_id, parent_id, flags, tail = match.groups()
    if version == "ff" or (version == "00" and tail is not None):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id, flags


def traceparent(client: Mapping[str, str]) -> str:
    """Continue the caller's W3C trace with a new span id, or start one."""
    caller = callers_trace(client)
    if caller is not None:
        # The caller's sampling decision travels on (only the sampled bit is defined).
        trace_id, flags = caller[0], "01" if int(caller[1], 16) & 1 else "00"
    else:
        trace_id, flags = _hex(128), "01"
    return f"00-{trace_id}-{_hex(64)}-{flags}"


def _hex(bits: int) -> str:
    # Identifiers, not secrets: the Mersenne Twister is random enough and skips a syscall.
    return f"{random.getrandbits(bits):0{bits // 4}x}"
