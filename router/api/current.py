"""Each request pins the runtime generation current when it arrives and is served by it to the
end, so a reload never changes the rules, models or pipelines under a running request (the pin
is set by the front door, router/api/door.py)."""

from __future__ import annotations

from aiohttp import web

from router.api.state import RUNTIME
from router.runtime import Generation

GENERATION = web.RequestKey("generation", Generation)

# Answered while no good policy bundle is active: liveness, readiness and server metadata.
WITHOUT_POLICY = frozenset({"/v2/health/live", "/v2/health/ready", "/v2"})


def current(request: web.Request) -> Generation:
    """The generation this request is served by (pinned at the front door)."""
    pinned = request.get(GENERATION)
    return pinned if pinned is not None else request.app[RUNTIME].current
