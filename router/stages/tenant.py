"""ResolveTenant (first in every pipeline): who is asking, may they use the model the path
names (403) and may they ask now (401, 429); AuthorizeModel (after parsing, where the body
names the model, as OpenAI's do): may this tenant use it (403)."""

from __future__ import annotations

from router.context import Reply, RequestContext
from router.tenancy import Tenancy


class ResolveTenant:
    name = "tenant"
    terminal = False

    def __init__(self, tenancy: Tenancy, revision: str = "") -> None:
        self._tenancy = tenancy
        self._revision = revision  # of the bundle whose tenants.yaml this is

    async def __call__(self, ctx: RequestContext) -> Reply | None:
        access, ctx.key_header = self._tenancy.identify_with_header(ctx.headers)
        # A refusal from here on (403, 429) is the bundle's decision too: answer and record
        # name the revision that made it (a caller without a valid key learns nothing of it).
        ctx.policy_revision = self._revision
        ctx.tenant = access.name
        if ctx.model and not access.may_use(ctx.model):
            # Named in X-Route-Reason, on either face: a router in front of this one learns
            # that its credential is good and only the model is not its tenant's.
            ctx.reasons.append("model_not_allowed")
            self._tenancy.authorize(access.name, ctx.model)  # raises 403 before a token is taken
        if access.limiter is not None:
            ctx.rate_limit = access.limiter.take()
        return None


class AuthorizeModel:
    name = "authorize"
    terminal = False

    def __init__(self, tenancy: Tenancy) -> None:
        self._tenancy = tenancy

    async def __call__(self, ctx: RequestContext) -> Reply | None:
        if not self._tenancy.may_use(ctx.tenant, ctx.model):
            ctx.reasons.append("model_not_allowed")  # as above
        self._tenancy.authorize(ctx.tenant, ctx.model)
        return None
