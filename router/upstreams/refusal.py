"""What an upstream's 401/403 means for a request the router forwards: whose credential it
refuses, or whether it refuses the model rather than the key.

A 401/403 to the router's own credential (a key in the cluster's `headers`, a URL's
user:password) is the router's failure, not the client's (UpstreamAuthFailed: the next target,
the operator told, a cool-off); a chained layer-router's 403 for its policy is relayed as it
came (residency), or, when it refuses a model to the router's key, means that the cluster does
not serve that model to this router (UpstreamModelNotAllowed: the next target). Where the
client's own credential went upstream, its refusal is the client's, relayed.
"""

from __future__ import annotations

import asyncio

import orjson

from router.errors import UpstreamAuthFailed, UpstreamError, UpstreamModelNotAllowed
from router.upstreams.client import UpstreamResponse
from router.upstreams.cluster import Cluster

# A layer-router names its route reasons on every answer, its refusals included.
CHAINED_REASONS = "X-Route-Reason"


async def check(cluster: Cluster, response: UpstreamResponse, where: str) -> None:
    """Raise for a refusal that is not to be relayed; any answer that shows the router's
    own credential accepted ends an outage of it."""
    if response.status == 403 and not cluster.settings.forward_authorization:
        await _check_model_allowed(cluster, response, where)
    if cluster.own_credential:
        _check_credential(cluster, response, where)


# Auth refusals that are a chained layer-router's policy, not its view of our credential.
_POLICY_REFUSALS = ("residency:",)


def _policy_refusal(response: UpstreamResponse) -> bool:
    """A chained layer-router's 403 for its policy: relayed as it came."""
    return any(r in response.headers.get(CHAINED_REASONS, "") for r in _POLICY_REFUSALS)


# A chained layer-router's reason (and an OpenAI-style error code) for a 403 to a tenant whose
# models do not include the one asked for: here, the router's own credential is that tenant.
_MODEL_NOT_ALLOWED = "model_not_allowed"
# A refusal's error body is small; one larger is not read for its code.
_REFUSAL_LIMIT = 64 * 1024
# ... and comes with its headers: one that stalls (a tarpitting gateway) is not waited for
# the whole try, which would make a refused key a timeout (no cool-off, the operator not told).
_REFUSAL_READ_S = 1.0


async def _check_model_allowed(cluster: Cluster, response: UpstreamResponse, where: str) -> None:
    """A 403 that refuses the model, not the key, to this router (a chained layer-router's
    tenant policy): the cluster does not serve that model for us, so the next target is tried;
    not an auth failure (its other models are served). The router's reason says so on either
    face; without it (an older router, another gateway) an OpenAI-style error code does, read
    only where the answer is the router's own failure anyway, never relayed."""
    own_reasons = response.headers.get(CHAINED_REASONS, "").split(">", 1)[0].split(",")
    refused = _MODEL_NOT_ALLOWED in own_reasons
    if not refused and cluster.own_credential and not _policy_refusal(response):
        refused = await _error_code(response) == _MODEL_NOT_ALLOWED
    if refused:
        response.abort()
        if cluster.own_credential:
            cluster.credential_accepted()  # the key is good: only the model is not ours there
        raise UpstreamModelNotAllowed(f"{where} does not allow the router's credential the model")


async def _error_code(response: UpstreamResponse) -> str | None:
    """The `error.code` of an OpenAI-style JSON error body, if it has one."""
    try:
        async with asyncio.timeout(_REFUSAL_READ_S):
            body = await response.read(_REFUSAL_LIMIT)
    except (UpstreamError, TimeoutError):  # too large, cut short or stalled: no code to go by
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _check_credential(cluster: Cluster, response: UpstreamResponse, where: str) -> None:
    """A 401/403 to the credential the router sends is the router's failure (misconfigured or
    revoked key), told to the operator once per outage; any other answer ends that outage."""
    status = response.status
    refused = status in (401, 403) and not (status == 403 and _policy_refusal(response))
    if not refused:
        cluster.credential_accepted()
        return
    response.abort()  # its body is not read (or for its code only): the connection goes
    cluster.credential_refused(status, "request", asyncio.get_running_loop().time())
    raise UpstreamAuthFailed(
        f"{where} refused the router's credential for it ({status}); the operator is told",
        status,
    )
