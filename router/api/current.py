"""Each request pins the runtime generation current when it arrives and is served by it to the
end, so a reload never changes the rules, models or pipelines under a running request."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from router.api.state import RUNTIME
from router.errors import PolicyPending
from router.runtime import Generation

GENERATION = web.RequestKey("generation", Generation)

# Answered while no good policy bundle is active: liveness, readiness and server metadata.
_WITHOUT_POLICY = frozenset({"/v2/health/live", "/v2/health/ready", "/v2"})


def current(request: web.Request) -> Generation:
    """The generation this request is served by (pinned by the middleware)."""
    pinned = request.get(GENERATION)
    return pinned if pinned is not None else request.app[RUNTIME].current


@web.middleware
async def generation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    generation = request.app[RUNTIME].current
    if generation.pending and request.path not in _WITHOUT_POLICY:
        raise PolicyPending("no verified policy bundle is active yet", retry_after=5.0)
    request[GENERATION] = generation
    generation.enter()
    try:
        return await handler(request)
    finally:
        generation.leave()
