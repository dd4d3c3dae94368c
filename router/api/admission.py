"""Admission at the door, before any work: shed load past `limits.max_in_flight` (503 +
Retry-After); on the routes that run no pipeline (metadata, model lists: the pipelines resolve
their tenant themselves) name the tenant, turn away requests without a valid key where
authentication is required (401), and questions about a model the tenant may not use (403).
Applied by the front door (router/api/door.py)."""

from __future__ import annotations

from aiohttp import web

from router.api.state import RUNTIME
from router.errors import ModelNotAllowed
from router.forwarding import ROUTE_REASON
from router.spool.collector import COLLECTOR_PATH
from router.tenancy import TenantAccess

# Probes must answer under load (a liveness probe that times out restarts a busy site), and the
# collector authenticates sites, not tenants.
EXEMPT = frozenset({"/v2/health/live", "/v2/health/ready", COLLECTOR_PATH})
# The asking tenant, on routes outside the pipelines (a model list shows only its models).
TENANT = web.RequestKey("tenant", TenantAccess)
# POST routes whose pipeline starts with ResolveTenant.
UNPIPELINED_POSTS = frozenset({"/v2/repository/index"})


def name_tenant(request: web.Request) -> None:
    """On a route outside the pipelines: who asks (401 without a valid key where one is
    required), and whether they may ask about the model the path names (403)."""
    tenancy = request.app[RUNTIME].current.pipelines.tenancy
    if tenancy is not None:
        access = tenancy.identify(request.headers)
        model = request.match_info.get("model")
        if model is not None:
            try:
                tenancy.authorize(access.name, model)
            except ModelNotAllowed as exc:
                # Named as the pipelines name it (stages/tenant.py): a router in front, asking
                # with its own key, learns that only the model is refused, not the key.
                exc.headers = {ROUTE_REASON: "model_not_allowed"}
                raise
        request[TENANT] = access
