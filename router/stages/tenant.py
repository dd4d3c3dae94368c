"""ResolveTenant (first in every pipeline): who is asking, and may they ask now (401, 429);
AuthorizeModel (once the model is known): may this tenant use it (403)."""

from __future__ import annotations

from router.context import Reply, RequestContext
from router.tenancy import Tenancy


class ResolveTenant:
    name = "tenant"
    terminal = False

    def __init__(self, tenancy: Tenancy) -> None:
        self._tenancy = tenancy

    async def __call__(self, ctx: RequestContext) -> Reply | None:
        access = self._tenancy.identify(ctx.headers)
        ctx.tenant = access.name
        if access.limiter is not None:
            ctx.rate_limit = access.limiter.take()
        return None


class AuthorizeModel:
    name = "authorize"
    terminal = False

    def __init__(self, tenancy: Tenancy) -> None:
        self._tenancy = tenancy

    async def __call__(self, ctx: RequestContext) -> Reply | None:
        self._tenancy.authorize(ctx.tenant, ctx.model)
        return None
