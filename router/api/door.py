"""The one middleware every request passes, in this order: failures become answers (errors.py,
outermost), admission (admission.py: in-flight shedding, the tenant on routes outside the
pipelines), then the runtime generation is pinned for the request's life (current.py). One
frame instead of three stacked middlewares: each costs aiohttp a call and a coroutine per
request."""

from __future__ import annotations

import asyncio
from time import perf_counter

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from router.api.admission import EXEMPT, UNPIPELINED_POSTS, name_tenant
from router.api.current import GENERATION, WITHOUT_POLICY
from router.api.draining import close_when_draining
from router.api.errors import answer_failure, client_left
from router.api.state import RUNTIME
from router.errors import Overloaded, PolicyPending
from router.logs import ACCESS_STARTED


def front_door(max_in_flight: int) -> Middleware:
    in_flight = 0

    @web.middleware
    async def door(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_flight
        request[ACCESS_STARTED] = perf_counter()  # the access log's sub-millisecond duration
        counted = False
        try:
            try:
                path = request.path
                if path not in EXEMPT:
                    if in_flight >= max_in_flight:
                        raise Overloaded("the router is at its limit of concurrent requests", 1.0)
                    in_flight += 1
                    counted = True
                    if request.method != "POST" or path in UNPIPELINED_POSTS:
                        name_tenant(request)
                generation = request.app[RUNTIME].current
                if generation.pending and path not in WITHOUT_POLICY:
                    raise PolicyPending("no verified policy bundle is active yet", retry_after=5.0)
                request[GENERATION] = generation
                generation.enter()
                try:
                    response = await handler(request)
                finally:
                    generation.leave()
            finally:
                if counted:
                    in_flight -= 1
        except Exception as exc:
            response = await answer_failure(request, exc)
        except asyncio.CancelledError:  # the client left: aiohttp cancelled the handler
            await client_left(request)
            raise
        close_when_draining(request, response)
        return response

    return door
