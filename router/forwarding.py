"""Turn a request context into what goes upstream, and an upstream answer into a Reply."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from router.context import Reply, RequestContext
from router.errors import RouterError, StreamBroken, UpstreamError
from router.headers import (
    HOPS,
    REQUEST_ID,
    TRACEPARENT,
    downstream_response_headers,
    traceparent,
    upstream_request_headers,
)
from router.policy.decide import TIER_ORDER
from router.upstreams.cluster import Cluster
from router.upstreams.forward import MAX_RESPONSE_BYTES, Forwarded, Outgoing
from router.v2.codec import with_timeout

SERVED_BY_TIER = "X-Served-By-Tier"
ROUTE_REASON = "X-Route-Reason"


def outgoing(ctx: RequestContext, cluster: Cluster, path: str | None = None) -> Outgoing:
    settings = cluster.settings
    headers = upstream_request_headers(
        ctx.headers, forward_authorization=settings.forward_authorization, extra=settings.headers
    )
    headers[REQUEST_ID] = ctx.request_id
    if not ctx.traceparent:  # made on first use: local answers never need one
        ctx.traceparent = traceparent(ctx.headers)
    headers[TRACEPARENT] = ctx.traceparent
    headers[HOPS] = str(ctx.hops + 1)
    if ctx.method != "POST":
        return Outgoing(ctx.method, path or ctx.path, headers, b"")
    if ctx.api == "kserve-v2" and ctx.document is not None:
        return _v2_outgoing(ctx, headers, path)
    headers["Content-Type"] = "application/json"
    return Outgoing("POST", path or ctx.path, headers, ctx.body)


def _v2_outgoing(ctx: RequestContext, headers: dict[str, str], path: str | None) -> Outgoing:
    """The v2 header is re-encoded per try so `parameters.timeout` carries the budget left."""
    header, binary = ctx.document, bytes(ctx.binary)
    assert header is not None
    if ctx.header_length is None:
        headers["Content-Type"] = "application/json"
    else:
        headers["Content-Type"] = "application/octet-stream"
    out = Outgoing("POST", path or ctx.path, headers, ctx.body)

    def body_for(left_ms: int) -> bytes:
        encoded = with_timeout(header, left_ms * 1000)
        if ctx.header_length is not None:
            out.headers["Inference-Header-Content-Length"] = str(len(encoded))
        return encoded + binary

    out.body_for = body_for
    return out


async def reply_from(ctx: RequestContext, cluster: Cluster, forwarded: Forwarded) -> Reply:
    response = forwarded.response
    ctx.upstream_ms = forwarded.upstream_ms
    ctx.served_by = f"{cluster.name}/{forwarded.endpoint.index}"
    # A configured upstream that is itself a layer-router says which tier really answered.
    ctx.served_tier = _served_tier(response.headers.get(SERVED_BY_TIER), cluster)
    ctx.upstream_reasons = response.headers.get(ROUTE_REASON, "")
    if forwarded.attempts > 1:
        ctx.reasons.append(f"retried:{forwarded.attempts - 1}")
    content_type = response.headers.get("Content-Type", "application/json").split(";")[0]
    headers = downstream_response_headers(response.headers)
    body = forwarded.body
    if body is None and content_type != "text/event-stream":
        body = await response.read(MAX_RESPONSE_BYTES)  # e.g. a JSON error for a stream request
    if body is not None:
        return Reply(body, content_type, response.status, headers)
    return Reply(b"", content_type, response.status, headers, stream=_relay(forwarded))


def _served_tier(claimed: str | None, cluster: Cluster) -> str:
    """An upstream's own X-Served-By-Tier is believed only when it names a real tier at or past
    the cluster's: a chained layer-router may say `central`; nothing may say `edge` for it."""
    own = cluster.settings.tier.value
    if claimed in TIER_ORDER and TIER_ORDER.index(claimed) >= TIER_ORDER.index(own):
        return claimed
    return own


async def _relay(forwarded: Forwarded) -> AsyncIterator[bytes]:
    """Whole SSE events as they arrive; a failure after the first byte becomes StreamBroken,
    which the handler turns into an explicit error event instead of a stream that looks
    complete. Half an event is held back until its end arrives, so a cut one is dropped
    rather than glued to the error event (which would make both unreadable)."""
    completed = False
    pending = b""
    try:
        async for chunk in forwarded.response.chunks():
            data = pending + chunk if pending else chunk
            end = _events_end(data)
            pending = data[end:]
            if end:
                yield data[:end]
        if pending:
            yield pending
        completed = True
    except UpstreamError as exc:
        raise StreamBroken(f"{exc.message} after the stream started") from None
    finally:
        if not completed:  # broken, or the client went away: cancel upstream, drop the conn
            forwarded.response.abort()


_EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")  # an empty line, in any of SSE's line endings


def _events_end(data: bytes) -> int:
    """Where the last complete SSE event in `data` ends (0: none complete yet)."""
    end = 0
    for separator in _EVENT_ENDS:
        at = data.rfind(separator)
        if at >= 0:
            end = max(end, at + len(separator))
    return end


def sse_error_event(error: RouterError) -> bytes:
    """An OpenAI-style error event: the openai SDK raises APIError when it reads one."""
    doc = {
        "error": {
            "message": error.message,
            "type": "server_error",
            "param": None,
            "code": error.code,
        }
    }
    return b"data: " + orjson.dumps(doc) + b"\n\n"
