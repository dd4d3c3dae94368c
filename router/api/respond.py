"""Run a pipeline for a request and write its reply, with the headers every answer carries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from aiohttp import HttpVersion11, web

from router.api.current import current
from router.api.draining import CUT_BY_SHUTDOWN, answer_cut_by_shutdown, close_when_draining
from router.api.passthrough import (
    CLIENT_STALLED,
    cut_connection,
    note_cut,
    pass_through,
    write_chunks,
)
from router.api.state import SPOOL, STATUS, TELEMETRY, TRAIL
from router.audit import new_audit_id
from router.budget import model_budget
from router.context import Reply, RequestContext
from router.errors import LoopDetected, RouterError
from router.forwarding import ROUTE_REASON, SERVED_BY_TIER
from router.headers import MAX_HOPS, REQUEST_ID, hops, request_id
from router.logs import ACCESS_TRACE
from router.pipeline import Pipeline
from router.privacy import redaction_header
from router.runtime import Generation
from router.sse import sse_error_event
from router.trail import note_client_gone

POLICY_REVISION = "X-Policy-Revision"
AUDIT_ID = "X-Audit-Id"
REDACTIONS = "X-Redactions"

# Where the error middleware finds the context of a failed request.
CTX = web.RequestKey("ctx", RequestContext)


def default_budget(generation: Generation, api: str, model: str | None) -> float:
    """A request's budget when it states none: the model's, then the route's; the policy
    bundle's budgets.yaml first, the site config's routing section after it."""
    bundle, routing = generation.bundle.budgets, generation.settings.routing
    candidates = (model_budget(bundle, routing, model) if model else None, bundle.routes.get(api))
    fallback = routing.kserve_v2_budget_ms if api == "kserve-v2" else routing.openai_budget_ms
    return float(next((c for c in candidates if c), fallback))


def new_context(
    request: web.Request, api: str, model: str, version: str | None, budget_ms: float
) -> RequestContext:
    ctx = RequestContext(
        api=api,
        model=model,
        version=version,
        deadline=asyncio.get_running_loop().time() + budget_ms / 1000,
        # uvloop's loop.time() moves in whole milliseconds: latency buckets need a finer clock.
        started=time.perf_counter(),
        method=request.method,
        path=request.path_qs,
        hops=hops(request.headers),
        headers=request.headers,
        request_id=client_request_id(request),
        audit_id=new_audit_id() if request.app[TRAIL].enabled else "",
        sized_only=request.version < HttpVersion11,
    )
    request[CTX] = ctx
    if ctx.hops > MAX_HOPS:
        raise LoopDetected(f"request passed {MAX_HOPS} layer-routers already: a routing loop?")
    return ctx


def client_request_id(request: web.Request) -> str:
    """The client's X-Request-Id, unless it holds what detection finds (a card number sent as
    an id): ids go upstream, into the audit trail and back in the answer (an error's too), so
    such a one is replaced."""
    chosen = request_id(request.headers)
    if chosen == request.headers.get(REQUEST_ID) and current(request).privacy.detectors.locate(
        chosen
    ):
        return request_id({})
    return chosen


def trace_headers(ctx: RequestContext) -> dict[str, str]:
    headers = {REQUEST_ID: ctx.request_id}
    if ctx.audit_id:
        headers[AUDIT_ID] = ctx.audit_id
    reasons = ",".join(ctx.reasons)
    if ctx.upstream_reasons:
        reasons = f"{reasons}>{ctx.upstream_reasons}" if reasons else ctx.upstream_reasons
    if reasons:
        headers[ROUTE_REASON] = reasons
    if ctx.served_tier:
        headers[SERVED_BY_TIER] = ctx.served_tier
    if ctx.policy_revision:
        headers[POLICY_REVISION] = ctx.policy_revision
    if ctx.redactions:
        headers[REDACTIONS] = redaction_header(ctx.redactions)
    if ctx.rate_limit:
        headers.update(ctx.rate_limit)
    if ctx.upstream_ms is not None:
        headers["Server-Timing"] = f"upstream;dur={ctx.upstream_ms:.2f}"
    return headers


async def run(request: web.Request, pipeline: Pipeline, ctx: RequestContext) -> web.StreamResponse:
    started = time.perf_counter()
    trail = request.app[TRAIL]
    store = request.app.get(SPOOL)
    if store is not None:  # drawn before dispatch, which may need the answer whole for it
        ctx.sample_draw = store.draw()
    if trail.enabled:
        # At the pipeline's first wait: off the answer's path when the loop has time to spare.
        asyncio.get_running_loop().call_soon(trail.digest_inputs, ctx)
    streams = request.app[STATUS].streams
    # Never expires on its own: a drain out of time ends the wait through it (end_streams).
    scope = asyncio.timeout(None)
    try:
        async with scope:
            streams.add(scope)
            try:
                reply = await pipeline.run(ctx)
            finally:
                streams.discard(scope)
                if ctx.trace_ids is not None:
                    request[ACCESS_TRACE] = ctx.trace_ids
    except asyncio.CancelledError:
        # The client left before the answer (aiohttp cancels the handler): counted still, or
        # the requests an operator most wants to see (the slow ones) would vanish.
        observe(request.app, ctx, None)
        raise
    except TimeoutError:
        if not scope.expired():
            raise
        raise answer_cut_by_shutdown() from None
    headers = {**reply.headers, **trace_headers(ctx)}
    if reply.passthrough:
        try:
            return await pass_through(request, reply, headers, ctx)
        finally:
            observe(request.app, ctx, reply.status)  # however it ended, as a stream
    if reply.stream is not None:
        return await _stream(request, reply, headers, ctx)
    headers.setdefault("Server-Timing", f"total;dur={(time.perf_counter() - started) * 1000:.2f}")
    # As a header, not aiohttp's content_type argument, which refuses a charset parameter.
    headers["Content-Type"] = reply.content_type
    response = web.Response(body=reply.body, status=reply.status, headers=headers)
    if len(reply.body) >= 1024 and "Accept-Encoding" in request.headers:
        response.enable_compression()
    close_when_draining(request, response)
    # The record is in the log file before any byte of the answer goes out: a kill -9 after
    # the client saw its X-Audit-Id must not lose the record (one write, no disk wait unless
    # fsync is 'always'). The sample and the counts are bookkeeping that can come after.
    try:
        await trail.write(ctx, reply.status, reply.body)
    except asyncio.CancelledError:
        # The client left while the record waited for its sync or its turn: counted as one
        # gone before the answer, as in the pipeline.
        observe(request.app, ctx, None)
        raise
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass  # the client left mid-answer (aiohttp sees it too); the record says what was sent
    finally:
        request.app[SPOOL].maybe_sample(ctx, reply)
        observe(request.app, ctx, reply.status)
    return response


async def _stream(
    request: web.Request, reply: Reply, headers: dict[str, str], ctx: RequestContext
) -> web.StreamResponse:
    """Relay a stream; its record is written once it ended, or says the client left first."""
    source = reply.stream
    assert source is not None
    trail = request.app[TRAIL]
    store = request.app.get(SPOOL)
    # Its sample's copy of what was sent, when one is due: taken as the chunks pass, read
    # once the stream went out whole.
    copy = store.stream_copy(ctx, reply) if store is not None else None
    whole = False
    # Never expires on its own: a drain out of time ends the stream through it (end_streams).
    scope = asyncio.timeout(None)
    # Its record is written when the stream ends (it digests what was sent): before the end
    # of the stream goes out, after the last bytes (knowing them last needs the end).
    stream = trail.streamed(
        ctx,
        reply.status,
        source if copy is None else copy.passing(source),
        lambda: CUT_BY_SHUTDOWN.code if scope.expired() else "",
    )
    headers["Content-Type"] = reply.content_type
    response = web.StreamResponse(status=reply.status, headers=headers)
    close_when_draining(request, response)
    stalled = asyncio.timeout(None)  # a client taking no event for the upstream's idle time
    try:
        await response.prepare(request)
        try:
            await write_chunks(request, response, stream, scope, stalled, reply.idle_s)
        except RouterError as exc:
            # Bytes already went out: say so in-stream, never end as if the stream were complete.
            await response.write(sse_error_event(exc))
        except TimeoutError:
            if stalled.expired():
                note_cut(ctx, CLIENT_STALLED)  # nobody reads an error event: the cut says it
                cut_connection(request, response, stalled=True)
                return response
            if not scope.expired():
                raise
            note_cut(ctx, CUT_BY_SHUTDOWN.code)  # found waiting on the client, not the relay
            await response.write(sse_error_event(CUT_BY_SHUTDOWN))
        else:
            whole = True
        await response.write_eof()
    except ConnectionError:
        note_client_gone(ctx)  # its record: what was sent, and that the client left
        return response  # the client left mid-stream: nobody to answer (no traceback logged)
    except asyncio.CancelledError:
        note_client_gone(ctx)  # the handler cancelled mid-write: the client left
        raise
    finally:
        try:
            # Closed now, not whenever the garbage collector breaks the cycle an exception's
            # traceback makes: the upstream connection, the cluster's place in its breaker and
            # the audit record all wait for the stream's end. The source too: a stream never
            # begun (the client left before the headers went out) did not close it.
            await stream.aclose()
            if isinstance(source, AsyncGenerator):
                await source.aclose()
        finally:
            await trail.client_gone(ctx)  # never begun: no record yet
            # Counted however it ended, as an answer whose client left is (see run): the
            # request counts then add up to the upstream's.
            observe(request.app, ctx, reply.status)
    if store is not None and copy is not None and whole:
        # Last: nothing else reads the context now, and the sample may be made off the loop.
        store.sample_stream(ctx, copy)
    return response


def observe(app: web.Application, ctx: RequestContext, status: int | None) -> None:
    """Count an answered request for /metrics (a few dict updates); `status` None: its client
    left before the answer."""
    metrics = app[TELEMETRY].requests
    latency = time.perf_counter() - ctx.started
    metrics.observe(ctx.api, ctx.served_tier, status, latency)
    metrics.redacted(ctx.redactions)
