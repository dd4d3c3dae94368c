"""Dispatch (terminal): walk the decision's targets in order until one answers.

A target that is unavailable (queue full, breaker open, upstream down after its retries), or
that answers it lacks the model its listing names, hands over to the next; any other client
error (4xx) ends the walk at once. Small-model fronting lives here
too: a local answer below its confidence threshold is escalated to a bigger model upstream.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from router.context import Reply, RequestContext
from router.errors import (
    DeadlineExceeded,
    NoHealthyTarget,
    NumericTensorRedaction,
    RouterError,
    Unavailable,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamModelMissing,
    UpstreamModelNotAllowed,
)
from router.forwarding import model_missing, outgoing, reply_from
from router.inference.local import LocalResult, run_local, top_score
from router.inference.repository import ModelRepository, ModelVersion
from router.policy.decide import Facts, Rules, Target, decide
from router.privacy import Privacy
from router.relaying import relay_for
from router.settings import RoutingSettings
from router.stages.classify import OFF_LOOP_BYTES
from router.stages.route import DecideRoute
from router.tenancy import Tenancy
from router.tier_view import prepare_view
from router.upstreams import forward
from router.upstreams.cluster import Cluster
from router.upstreams.registry import Upstreams
from router.v2.request import build_request
from router.v2.response import OutputTensor, encode_response

log = logging.getLogger(__name__)

# What makes the walk go on to the next target.
_PASS_OVER = (Unavailable, UpstreamError, UpstreamModelMissing)

# Reasons a local answer stood in for an escalation that could not happen.
_ESCALATION_MISSED = ("escalation_unavailable", "escalation_failed:")


def _missing_for_all(ctx: RequestContext, cluster: Cluster, model: str) -> bool:
    """Whether an upstream's "no such model" speaks for every request for the model, not
    only this one's: not when it is about a version the request named (a client may name
    any), nor when the client's own key went upstream (OpenAI says model_not_found to a key
    without access to the model). `model`: an escalation's, which names no version."""
    return (bool(model) or not ctx.version) and not cluster.settings.forward_authorization


class Dispatch:
    name = "dispatch"
    terminal = True

    def __init__(
        self,
        models: ModelRepository,
        upstreams: Upstreams,
        routing: RoutingSettings,
        tier: str,
        privacy: Privacy,
        route: DecideRoute,
        tenancy: Tenancy | None = None,
    ) -> None:
        self._tenancy = tenancy
        self._models = models
        self._upstreams = upstreams
        self._routing = routing
        self._tier = tier
        self._privacy = privacy
        self._route = route

    async def __call__(self, ctx: RequestContext) -> Reply:
        assert ctx.decision is not None, "DecideRoute runs before Dispatch"
        last: RouterError | None = None
        refused: NumericTensorRedaction | None = None
        for position, target in enumerate(ctx.decision.targets):
            if position and self._too_slow(ctx, target):
                ctx.reasons.append(f"over_budget:{target.name}")
                continue
            ctx.upstream_reasons = ""  # an earlier try's chained reasons are not this one's
            try:
                if target.kind == "local":
                    reply = await self._local(ctx)
                else:
                    mark = len(ctx.reasons)
                    reply = await self._forward(ctx, target)
                    kind = "fallback" if position else "forward"
                    ctx.reasons.insert(mark, f"{kind}:{target.name}")
                return reply
            except NumericTensorRedaction as exc:
                # Nothing was sent: a later tier whose policy lets the value through as it is
                # may still serve the request.
                ctx.reasons.append(f"failed:{target.name}:{exc.code}")
                refused = refused or exc
            except _PASS_OVER as exc:
                # A chained router's reasons for refusing go with its error, as they would with
                # its answer; any other error is this router's own.
                ctx.upstream_reasons = getattr(exc, "chained_reasons", "")
                if isinstance(exc, DeadlineExceeded):
                    raise
                ctx.reasons.append(f"failed:{target.name}:{exc.code}")
                last = exc
        if refused is not None:
            # What the client must change, rather than a later target's outage (or the
            # residency 503), which a retry of the same request could never get past.
            ctx.upstream_reasons = ""
            raise refused
        assert last is not None, "DecideRoute never passes an empty decision"
        if any(r.startswith("residency:") for r in ctx.decision.reasons):
            ctx.upstream_reasons = ""
            # Residency kept some targets out of the walk: the caller learns that nothing this
            # request may reach is answering (503, fail closed), not one upstream's error,
            # which would hide why the router stopped there. The failures stay in the reasons.
            raise NoHealthyTarget(
                f"no target this request's data may reach can serve model '{ctx.model}' now", 5.0
            )
        raise last

    @staticmethod
    def _too_slow(ctx: RequestContext, target: Target) -> bool:
        """A fallback is re-judged against what the failed tries left of the budget."""
        left_ms = (ctx.deadline - asyncio.get_running_loop().time()) * 1000
        return target.expected_ms > left_ms

    async def _forward(
        self, ctx: RequestContext, target: Target, path: str | None = None, model: str = ""
    ) -> Reply:
        """`model`: the one `path` names when it is not the request's (an escalation)."""
        cluster = self._upstreams.clusters.get(target.name)
        if cluster is None:  # removed by a reload since the decision: try the next target
            raise NoHealthyTarget(f"cluster '{target.name}' was removed by a reload", 1.0)
        # Bodies over retry.max_body_bytes are never replayed (memory held for a retry).
        replayable = len(ctx.body) <= cluster.settings.retry.max_body_bytes and (
            # An empty key names nothing under which a repeat is safe: it is no key.
            ctx.path.startswith(self._routing.idempotent_paths)
            or bool(ctx.headers.get("Idempotency-Key", "").strip())
        )
        prober = self._upstreams.probers[cluster.name]
        await prepare_view(ctx, cluster.settings.tier.value, self._privacy)
        request = outgoing(ctx, cluster, self._privacy, path)
        try:
            forwarded = await forward.call(
                cluster,
                self._upstreams.transports[cluster.name],
                request,
                ctx.deadline,
                replayable=replayable,
                stream=ctx.stream,
                relay=relay_for(ctx, cluster, self._privacy),  # the view's tokens are issued
            )
        except UpstreamError as exc:
            if not isinstance(exc, UpstreamAuthFailed):  # a refused key changed no listing
                prober.failed()  # what the cluster serves may have changed: ask again soon
            raise
        except UpstreamModelNotAllowed:
            # Refused to the router's credential, so to every request from here: not first
            # for the model until the listing is asked again (a chained router lists only
            # what our key may use), its other models untouched.
            model = model or ctx.model
            cluster.not_allowed(model, asyncio.get_running_loop().time())
            prober.failed()
            raise UpstreamModelNotAllowed(
                f"cluster {cluster.name} does not serve model '{model}' to this router: its "
                "policy does not allow this router's credential that model"
            ) from None
        if forwarded.response.status == 404:
            prober.failed()  # it no longer has the model its list promised
            if await model_missing(forwarded):
                # Not there for this request, nor first for the next ones until the listing
                # is asked again: the next target has its chance.
                if _missing_for_all(ctx, cluster, model):
                    cluster.refuse(model or ctx.model, asyncio.get_running_loop().time())
                model = model or ctx.model
                raise UpstreamModelMissing(
                    f"cluster {cluster.name} does not serve model '{model}' although its "
                    "model list names it"
                )
        return await reply_from(ctx, cluster, forwarded)

    async def _local(self, ctx: RequestContext) -> Reply:
        assert ctx.document is not None
        entry = self._models.get(ctx.model, ctx.version)
        # Decoding much JSON data or many binary BYTES elements (one by one) is no work for
        # the loop; binary numbers are read in place (np.frombuffer), at once.
        if _slow_to_decode(ctx):
            request = await asyncio.to_thread(build_request, ctx.document, ctx.binary)
        else:
            request = build_request(ctx.document, ctx.binary)
        result = await run_local(entry, request, ctx.deadline)
        ctx.served_tier, ctx.served_by = self._tier, f"{entry.model}/{entry.version}"
        ctx.served_version, ctx.model_sha256 = str(entry.version), entry.sha256
        ctx.reasons.append("local")
        escalated = await self._maybe_escalate(ctx, entry, result)
        if escalated is not None:
            return escalated
        answer = (entry.model, str(entry.version), request.id, result.outputs)
        if sum(_slow_to_encode(out) for out in result.outputs) > OFF_LOOP_BYTES:
            # Nor is writing much JSON data or many BYTES elements (binary numbers are copied).
            body, header_length = await asyncio.to_thread(encode_response, *answer)
        else:
            body, header_length = encode_response(*answer)
        headers = {}
        if ctx.reasons[-1].startswith(_ESCALATION_MISSED):
            # A low-confidence answer standing in for the bigger model's, out of reach now:
            # no cache (ours, a downstream router's) may keep it past the outage.
            headers["Cache-Control"] = "no-store"
        if header_length is None:
            return Reply(body, headers=headers)
        headers["Inference-Header-Content-Length"] = str(header_length)
        return Reply(body, content_type="application/octet-stream", headers=headers)

    async def _maybe_escalate(
        self, ctx: RequestContext, entry: ModelVersion, result: LocalResult
    ) -> Reply | None:
        route = self._routing.models.get(ctx.model)
        rule = route.escalate if route else None
        if rule is None:
            return None
        score = top_score(entry, result, rule.output)
        if score is None or score >= rule.threshold:
            return None
        if self._tenancy is not None and not self._tenancy.may_use(ctx.tenant, rule.to_model):
            # The bigger model is not among the tenant's: its answer would be one the tenant
            # could never ask for. The local answer is the whole answer for this tenant.
            ctx.reasons.append("escalation_not_allowed")
            return None
        targets = self._escalation_targets(ctx, rule.to_model)
        if not targets:
            ctx.reasons.append("escalation_unavailable")
            return None
        path = f"/v2/models/{rule.to_model}/infer"
        local = (ctx.served_tier, ctx.served_by, ctx.upstream_reasons, ctx.upstream_ms)
        # As any request's fallback, the next tier with the bigger model is tried when one
        # fails; a failure is named `failed:NAME:CODE` only when another try follows it.
        failure, code, skipped = "", "", []
        for position, target in enumerate(targets):
            if position and self._too_slow(ctx, target):
                skipped.append(f"over_budget:{target.name}")
                continue
            if failure:
                ctx.reasons.extend([failure, *skipped])
                failure, skipped = "", []
            try:
                reply = await self._forward(ctx, target, path, rule.to_model)
            except (*_PASS_OVER, NumericTensorRedaction) as exc:
                if isinstance(exc, DeadlineExceeded):
                    raise
                ctx.served_tier = self._tier
                failure, code = f"failed:{target.name}:{exc.code}", exc.code
                continue
            if reply.status != 200:
                # The bigger model refused (say, our inputs do not fit it): the local answer is
                # still an answer, the upstream's 4xx would only be a failure for the client.
                ctx.served_tier, ctx.served_by, ctx.upstream_reasons, ctx.upstream_ms = local
                ctx.reasons.append(f"escalation_failed:upstream_status_{reply.status}")
                return None
            ctx.reasons.append(f"escalated_low_confidence:{target.name}")
            # An upstream's model answered: the local artefact's version and digest are not its.
            ctx.served_version = ctx.model_sha256 = ""
            ctx.served_model = rule.to_model
            return reply
        ctx.reasons.extend([f"escalation_failed:{code}", *skipped])
        return None

    def _escalation_targets(self, ctx: RequestContext, model: str) -> tuple[Target, ...]:
        """The bigger model's upstream targets, in order, by the same rules as any request."""
        now = asyncio.get_running_loop().time()
        snapshot = replace(self._upstreams.snapshot(now, self._models), local={})
        facts = Facts(ctx.api, model, (ctx.deadline - now) * 1000, len(ctx.body))
        # Residency and version pins hold here too: the large model's, not the small one's.
        permitted = self._route.permitted(ctx, snapshot.clusters) - self._route.pinned_out(model)
        return tuple(decide(facts, Rules(), snapshot, self._tier, permitted).targets)


def _slow_to_decode(ctx: RequestContext) -> bool:
    """Whether decoding the body takes Python work worth a thread: over OFF_LOOP_BYTES of
    JSON (its `data`), or of binary BYTES elements."""
    json_bytes = len(ctx.body) if ctx.header_length is None else ctx.header_length
    if json_bytes > OFF_LOOP_BYTES:
        return True
    inputs = ctx.document.get("inputs") if ctx.document is not None else None
    for tensor in inputs if isinstance(inputs, list) else ():
        if not isinstance(tensor, dict):
            continue  # no tensor: build_request refuses it (400)
        params = tensor.get("parameters")
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if tensor.get("datatype") == "BYTES" and isinstance(size, int) and size > OFF_LOOP_BYTES:
            return True
    return False


def _slow_to_encode(out: OutputTensor) -> int:
    """The bytes of an output whose writing is Python or JSON work (not a binary copy)."""
    return 0 if out.binary and out.array.dtype.kind != "O" else out.array.nbytes
