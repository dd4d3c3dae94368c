"""DecideRoute: gather the facts and a health snapshot, ask the pure policy where to go."""

from __future__ import annotations

import asyncio

from router.context import Reply, RequestContext
from router.errors import BudgetUnmeetable, ModelNotFound, NoHealthyTarget, Offline
from router.inference.repository import ModelRepository
from router.policy.decide import Decision, Facts, Failure, Rules, decide
from router.settings import RoutingSettings
from router.upstreams.registry import Upstreams


class DecideRoute:
    name = "route"
    terminal = False

    def __init__(
        self, routing: RoutingSettings, models: ModelRepository, upstreams: Upstreams, tier: str
    ) -> None:
        self._models = models
        self._upstreams = upstreams
        self._tier = tier
        self._rules = Rules(
            heavy_models=frozenset(name for name, r in routing.models.items() if r.heavy),
            local_max_payload_bytes=routing.local_max_payload_bytes,
        )

    async def __call__(self, ctx: RequestContext) -> Reply | None:
        now = asyncio.get_running_loop().time()
        facts = Facts(ctx.api, ctx.model, (ctx.deadline - now) * 1000, len(ctx.body))
        snapshot = self._upstreams.snapshot(now, self._models)
        ctx.decision = decision = decide(facts, self._rules, snapshot, self._tier)
        ctx.reasons.extend(decision.reasons)
        if decision.failure is not None:
            raise _failure_error(ctx, decision)
        return None


def _failure_error(ctx: RequestContext, decision: Decision) -> Exception:
    failure = decision.failure
    if failure is Failure.UNKNOWN_MODEL:
        return ModelNotFound(f"unknown model '{ctx.model}'")
    if failure is Failure.OVER_BUDGET:
        return BudgetUnmeetable(
            f"no target for model '{ctx.model}' can answer within the latency budget"
        )
    if failure is Failure.OFFLINE:
        return Offline(f"model '{ctx.model}' needs an upstream and the site is offline", 30.0)
    return NoHealthyTarget(f"no healthy target serves model '{ctx.model}'", 5.0)
