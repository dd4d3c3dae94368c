"""The pipeline run with spans: one server span per request (continuing the caller's
`traceparent`) and one child per stage. Only reached when tracing is on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from router.context import Reply, RequestContext
from router.errors import RouterError
from router.headers import TRACEPARENT
from router.telemetry.tracing import traceparent_of

if TYPE_CHECKING:
    from router.pipeline import Rest

_PROPAGATOR = TraceContextTextMapPropagator()
_FORWARDED = ("forward:", "fallback:")  # reasons Dispatch gives, naming the cluster
_NO_EXCEPTIONS: dict[str, Any] = {"record_exception": False, "set_status_on_exception": False}


async def run_traced(stages: Sequence[Any], ctx: RequestContext, tracer: Tracer) -> Reply:
    # The caller's trace and span ids only: its tracestate is vendor data a client writes, and
    # a span would export it with every span of the request (it still travels upstream).
    caller = ctx.headers.get(TRACEPARENT)
    parent = _PROPAGATOR.extract({TRACEPARENT: caller} if caller is not None else {})
    # Ended by hand, not by a `with`: a streamed answer's span lasts until its last event.
    span = tracer.start_span(f"layer-router {ctx.api}", context=parent, kind=SpanKind.SERVER)
    span.set_attribute("layer_router.api", ctx.api)
    ids = span.get_span_context()
    ctx.trace_ids = (format(ids.trace_id, "032x"), format(ids.span_id, "016x"))
    status = 500
    token = otel_context.attach(set_span_in_context(span))
    try:
        reply = await _run_from(stages, 0, ctx, tracer)
        status = reply.status
    except RouterError as exc:
        status = exc.status
        span.set_attribute("layer_router.error_code", exc.code)
        _end(span, ctx, status)
        raise
    except BaseException as exc:
        span.set_attribute("layer_router.error_type", type(exc).__name__)
        _end(span, ctx, status)
        raise
    finally:
        otel_context.detach(token)
    if reply.stream is None:
        _end(span, ctx, status)
    else:
        reply.stream = _ending(reply.stream, span, ctx, status)
    return reply


async def _ending(
    chunks: AsyncIterator[bytes], span: Span, ctx: RequestContext, status: int
) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except RouterError as exc:
        span.set_attribute("layer_router.error_code", exc.code)
        raise
    finally:
        _end(span, ctx, status)


def _end(span: Span, ctx: RequestContext, status: int) -> None:
    _finish(span, ctx, status)
    span.end()


def _finish(span: Span, ctx: RequestContext, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    span.set_attribute("layer_router.outcome", "ok" if status < 400 else "error")
    if ctx.served_tier:
        span.set_attribute("layer_router.tier", ctx.served_tier)
    cluster = next((r.split(":", 1)[1] for r in ctx.reasons if r.startswith(_FORWARDED)), "")
    if cluster:
        span.set_attribute("layer_router.cluster", cluster)
    if ctx.cache:
        span.set_attribute("layer_router.cache", ctx.cache)
    if ctx.reasons:
        span.set_attribute("layer_router.reasons", ",".join(ctx.reasons))
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


async def _run_from(
    stages: Sequence[Any], start: int, ctx: RequestContext, tracer: Tracer
) -> Reply:
    for position in range(start, len(stages)):
        stage = stages[position]
        with tracer.start_as_current_span(f"stage {stage.name}", **_NO_EXCEPTIONS) as span:
            if stage.terminal:
                # The upstream continues the trace under this span.
                ctx.traceparent = traceparent_of(span)
            around = getattr(stage, "around", None)
            try:
                if around is not None:
                    rest: Rest = partial(_run_from, stages, position + 1, ctx, tracer)
                    reply: Reply = await around(ctx, rest)
                    return reply
                answer = await stage(ctx)
            except RouterError as exc:
                span.set_attribute("layer_router.error_code", exc.code)
                raise
            if answer is not None:
                span.set_attribute("layer_router.answered", True)
                return answer  # type: ignore[no-any-return]
    raise AssertionError("the terminal stage returned no reply")
