"""DecideRoute: gather the facts and a health snapshot, ask the pure policy where to go."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from router.context import Reply, RequestContext
from router.errors import (
    BudgetUnmeetable,
    DetectionFailed,
    ModelNotFound,
    NoHealthyTarget,
    Offline,
    ResidencyDenied,
)
from router.inference.local import check_request
from router.inference.repository import ModelRepository
from router.policy.bundle import PolicyBundle
from router.policy.decide import (
    ClusterView,
    Decision,
    Facts,
    Failure,
    LocalView,
    Rules,
    Snapshot,
    decide,
)
from router.policy.residency import LOCAL_TIER, permits
from router.settings import RoutingSettings, SiteSettings
from router.upstreams.pinning import compliant
from router.upstreams.registry import Upstreams
from router.v2.request import build_request


class DecideRoute:
    name = "route"
    terminal = False

    def __init__(
        self,
        routing: RoutingSettings,
        models: ModelRepository,
        upstreams: Upstreams,
        site: SiteSettings,
        bundle: PolicyBundle,
    ) -> None:
        self._models = models
        self._upstreams = upstreams
        self._tier = site.tier.value
        self._origin = site.jurisdiction
        self._bundle = bundle
        self._rules = Rules(
            heavy_models=frozenset(name for name, r in routing.models.items() if r.heavy),
            local_max_payload_bytes=routing.local_max_payload_bytes,
        )

    async def __call__(self, ctx: RequestContext) -> Reply | None:
        now = asyncio.get_running_loop().time()
        facts = Facts(ctx.api, ctx.model, (ctx.deadline - now) * 1000, len(ctx.body))
        whole = self._upstreams.snapshot(now, self._models)
        snapshot = self._for_version(ctx, whole)
        permitted = self.permitted(ctx, snapshot.clusters) - self._pinned_out(ctx)
        ctx.decision = decision = decide(facts, self._rules, snapshot, self._tier, permitted)
        ctx.reasons.extend(decision.reasons)
        if decision.failure is not None:
            self._check_request(ctx, decision)  # a bad request is a 400 whatever its budget
            error = _failure_error(ctx, decision)
            if decision.failure is Failure.UNKNOWN_MODEL and ctx.api == "openai":
                error = self._not_openai(ctx.model) or error
            if snapshot is not whole or (
                isinstance(error, NoHealthyTarget) and "local_not_ready" in decision.reasons
            ):
                # Nothing else serves it: say why the local model (or the version asked for)
                # is not ready or not here instead.
                self._models.get(ctx.model, ctx.version)  # raises ModelNotReady/NotFound
            raise error
        return None

    def _for_version(self, ctx: RequestContext, snapshot: Snapshot) -> Snapshot:
        """The local model as not ready when the version a request names is not loaded here
        (or broken) while another is: a tier that has it may serve the request; when none can,
        the local error says why, as before (see `__call__`)."""
        if ctx.version is None or ctx.model not in snapshot.local:
            return snapshot
        if self._models.ready_here(ctx.model, ctx.version):
            return snapshot
        return replace(snapshot, local={ctx.model: LocalView(ready=False, expected_ms=0.0)})

    def _not_openai(self, model: str) -> ModelNotFound | None:
        """A local model, or one only KServe v2 clusters serve, asked for over the OpenAI API
        (which /v1/models lists, as it lists every model): say which API serves it rather
        than that it does not exist."""
        if model in self._models.models:
            where = "here"
        elif any(model in (c.models or ()) for c in self._upstreams.clusters.values()):
            where = "by this site's upstreams"
        else:
            return None
        return ModelNotFound(
            f"model '{model}' is served {where} over the KServe v2 API only: "
            f"POST /v2/models/{model}/infer"
        )

    def _check_request(self, ctx: RequestContext, decision: Decision) -> None:
        """A v2 request's tensors and parameters are decoded by the target that runs them;
        when no target will, they are decoded here, so a malformed request gets its 400
        first. Against the local model's signature (and its rules) only when the local model
        was a candidate the budget ruled out; an upstream judges the rest."""
        if ctx.api != "kserve-v2" or ctx.document is None:
            return
        if decision.failure is Failure.UNKNOWN_MODEL:
            return  # nothing to judge the tensors against: the 404 says so
        local = "local_over_budget" in decision.reasons
        request = build_request(ctx.document, ctx.binary, text_bytes=local)
        if local:
            check_request(self._models.get(ctx.model, ctx.version), request)

    def permitted(self, ctx: RequestContext, clusters: tuple[ClusterView, ...]) -> frozenset[str]:
        """The clusters residency lets this request reach (an unscanned one: only the site's)."""
        if ctx.unscanned or ctx.unsurveyed:
            return frozenset(c.name for c in clusters if c.tier == LOCAL_TIER)
        entities = frozenset(ctx.entities)
        return frozenset(
            c.name
            for c in clusters
            if permits(
                self._bundle,
                declared=ctx.declared_class or self._bundle.data_classes.default,
                entities=entities,
                tier=c.tier,
                jurisdictions=c.jurisdictions,
                origin=self._origin,
                hosts=c.hosts,
            )
        )

    def _pinned_out(self, ctx: RequestContext) -> frozenset[str]:
        out = self.pinned_out(ctx.model)
        ctx.reasons.extend(f"version_pinned:{name}" for name in sorted(out))
        return out

    def pinned_out(self, model: str) -> frozenset[str]:
        """Clusters whose reported versions of `model` the bundle does not allow."""
        if not self._bundle.versions.tiers:
            return frozenset()
        clusters = self._upstreams.clusters.values()
        return frozenset(c.name for c in clusters if not compliant(self._bundle, c, model))


def _failure_error(ctx: RequestContext, decision: Decision) -> Exception:
    failure = decision.failure
    if failure is Failure.UNKNOWN_MODEL:
        return ModelNotFound(f"unknown model '{ctx.model}'")
    if failure is Failure.OVER_BUDGET:
        return BudgetUnmeetable(
            f"no target for model '{ctx.model}' can answer within the latency budget"
        )
    if failure is Failure.RESIDENCY:
        if ctx.unscanned:
            return DetectionFailed(
                f"the request could not be checked for sensitive data ({ctx.unscanned}), so it "
                f"may not leave this site, and model '{ctx.model}' is not served here"
            )
        return ResidencyDenied(
            f"model '{ctx.model}' is served only where this request's data "
            f"(class {ctx.data_class}) may not go"
        )
    if failure is Failure.OFFLINE:
        return Offline(f"model '{ctx.model}' needs an upstream and the site is offline", 30.0)
    if any(r.startswith("unhealthy:") for r in decision.reasons):
        ctx.reasons.append("offline")
        return Offline(
            f"model '{ctx.model}' needs an upstream tier and none that may serve it is "
            "reachable now",
            5.0,
        )
    return NoHealthyTarget(f"no healthy target serves model '{ctx.model}'", 5.0)
