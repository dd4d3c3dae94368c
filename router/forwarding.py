"""Turn a request context into what goes upstream, and an upstream answer into a Reply."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections import Counter
from collections.abc import AsyncIterator

import orjson

from router.context import Reply, RequestContext, media_type
from router.errors import (
    NumericTensorRedaction,
    StreamBroken,
    UpstreamError,
    UpstreamResponseTooLarge,
)
from router.headers import (
    DECLARED_CLASS,
    FOUND_ENTITIES,
    HOPS,
    REQUEST_ID,
    TENANT,
    TRACEPARENT,
    TRACESTATE,
    WITH_CREDENTIALS,
    callers_trace,
    downstream_response_headers,
    traceparent,
    upstream_request_headers,
)
from router.openai_numbers import refuse_json_numbers_made_text
from router.policy.decide import TIER_ORDER
from router.privacy import Privacy
from router.redaction.rehydrate import (
    SseRehydrator,
    dumps_stdlib,
    rehydrate_json,
    rehydrate_v2_binary,
)
from router.redaction.vault import TokenVault
from router.relaying import exact_length, relayed
from router.sse import ends_with_done, events_end
from router.stages.classify import OFF_LOOP_BYTES
from router.tier_view import View, view_for
from router.upstreams.cluster import Cluster
from router.upstreams.forward import Forwarded, Outgoing
from router.upstreams.own_secrets import scrubbed
from router.v2.numeric_redaction import refuse_numbers_made_text
from router.v2.request import with_timeout

SERVED_BY_TIER = "X-Served-By-Tier"
ROUTE_REASON = "X-Route-Reason"


def outgoing(
    ctx: RequestContext, cluster: Cluster, privacy: Privacy, path: str | None = None
) -> Outgoing:
    settings = cluster.settings
    view = view_for(ctx, settings.tier.value, privacy)
    if view.changed:
        _refuse_numbers_made_text(ctx, view, settings.tier.value, privacy, path)
    headers = upstream_request_headers(
        view.headers,
        forward_authorization=settings.forward_authorization,
        extra=settings.headers,
        key_header=ctx.key_header,
    )
    if cluster.url_credential and settings.forward_authorization:
        _without_account_beside_url_credential(headers)
    headers[REQUEST_ID] = ctx.request_id
    if not ctx.traceparent:  # made on first use: local answers never need one
        ctx.traceparent = traceparent(ctx.headers)
    headers[TRACEPARENT] = ctx.traceparent
    if TRACESTATE in ctx.headers and callers_trace(ctx.headers) is None:
        # A tracestate belongs to the traceparent it came with: a trace we started anew must
        # not carry another trace's vendor state (W3C Trace Context §3.3).
        for name in [name for name in headers if name.lower() == TRACESTATE]:
            del headers[name]
    headers[HOPS] = str(ctx.hops + 1)
    if ctx.tenant:
        headers[TENANT] = _tenant_scope(ctx, privacy)
    if ctx.declared_class:
        headers[DECLARED_CLASS] = ctx.declared_class
    found = ",".join(sorted(str(entity) for entity, n in ctx.entities.items() if n > 0))
    if found:
        headers[FOUND_ENTITIES] = found
    target = path or view.path
    if ctx.method != "POST":
        return Outgoing(ctx.method, target, headers, b"")
    if ctx.api == "kserve-v2" and view.document is not None:
        return _v2_outgoing(ctx, view, headers, target)
    headers["Content-Type"] = "application/json"
    body = orjson.dumps(view.document) if view.changed or view.reencoded else ctx.body
    return Outgoing("POST", target, headers, body)


def _without_account_beside_url_credential(headers: dict[str, str]) -> None:
    """Without an Authorization of the client's, the endpoint URL's user:password goes as
    Basic: the router's own credential, beside which the client's account headers and
    cookies never go (headers.WITH_CREDENTIALS)."""
    if any(name.lower() == "authorization" for name in headers):
        return
    for name in [name for name in headers if name.lower() in WITH_CREDENTIALS]:
        del headers[name]


def _tenant_scope(ctx: RequestContext, privacy: Privacy) -> str:
    """The tenant this router resolved and, behind it, the one a router in front named: the
    next router scopes its cache by both, so that router's tenants, which reach it under this
    router's one credential, stay apart there too. The named one goes on as a keyed digest:
    a client may send the header, and its bytes are never forwarded as written."""
    behind = ctx.headers.get(TENANT)
    if not behind:
        return ctx.tenant
    raw = behind.encode("utf-8", "surrogateescape")  # as aiohttp decoded the header's bytes
    digest = hmac.new(privacy.secret, raw, hashlib.sha256).hexdigest()[:24]
    return f"{ctx.tenant}>{digest}"


def _refuse_numbers_made_text(
    ctx: RequestContext, view: View, tier: str, privacy: Privacy, path: str | None
) -> None:
    """Before anything is sent: a numeric tensor (or an OpenAI body's JSON number) that
    redaction would fill with text fails the request here (422) rather than at the upstream
    (400). Nothing went, so nothing was redacted for the record."""
    plan = privacy.plans[tier]
    try:
        if ctx.api == "kserve-v2":
            refuse_numbers_made_text(
                ctx.scanned_document,
                view.document,
                tier=tier,
                model=_model_of(path) or ctx.model,
                plan=plan,
                scanner=ctx.scanner,
            )
        elif ctx.api == "openai":
            refuse_json_numbers_made_text(
                ctx.scanned_document, view.document, tier=tier, plan=plan, scanner=ctx.scanner
            )
    except NumericTensorRedaction:
        ctx.redactions = Counter()
        raise


def _model_of(path: str | None) -> str:
    """The model an escalation's path (/v2/models/NAME/infer) names."""
    parts = path.split("/") if path else []
    return parts[3] if len(parts) > 3 and parts[1:3] == ["v2", "models"] else ""


def _v2_outgoing(ctx: RequestContext, view: View, headers: dict[str, str], path: str) -> Outgoing:
    """The v2 header is re-encoded per try so `parameters.timeout` carries the budget left.
    A view whose binary tensors all became JSON (inlined BYTES) goes as plain JSON."""
    header = view.document
    assert header is not None
    binary = bytes(ctx.binary) if view.binary is None else view.binary
    framed = ctx.header_length is not None and (view.binary is None or binary)
    headers["Content-Type"] = "application/octet-stream" if framed else "application/json"
    out = Outgoing("POST", path, headers, ctx.body)

    def body_for(left_ms: int) -> bytes:
        encoded = with_timeout(header, left_ms * 1000)
        if framed:
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
    # Media types are case-insensitive (RFC 9110 §8.3.1): `Text/Event-Stream` is a stream too.
    raw_type = response.headers.get("Content-Type", "application/json")
    content_type = media_type(raw_type)
    headers = downstream_response_headers(response.headers)
    body = forwarded.body
    vault = ctx.vault
    idle_s = cluster.settings.request_timeout_ms / 1000  # a stalled client's cut (respond)
    if body is None and not ctx.stream and not (vault is not None and len(vault)):
        # A long answer that nothing needs whole (router.relaying): it flows through.
        length = exact_length(response.headers)
        if length is not None:
            headers["Content-Length"] = length
        stream = relayed(forwarded)
        return Reply(
            b"", raw_type, response.status, headers, stream, passthrough=True, idle_s=idle_s
        )
    if body is None and content_type != "text/event-stream":
        body = await _rest_of(forwarded)  # e.g. a JSON error for a stream request
    # The client gets the upstream's whole Content-Type: a charset (or any parameter) is how
    # it reads the bytes passed on.
    if body is not None:
        if response.status >= 400 and cluster.secrets:
            body = scrubbed(body, cluster.secrets)  # an error quoting the request it refused
        if vault is not None and len(vault):
            if len(body) > OFF_LOOP_BYTES:
                # A walk over the whole answer, as the redaction walk was: not on the loop.
                body = await asyncio.to_thread(_rehydrated, body, content_type, headers, vault)
            else:
                body = _rehydrated(body, content_type, headers, vault)
        return Reply(body, raw_type, response.status, headers)
    stream = _relay(forwarded)
    if vault is not None and len(vault):
        stream = _rehydrate_stream(stream, SseRehydrator(vault))
    return Reply(b"", raw_type, response.status, headers, stream=stream, idle_s=idle_s)


# The error types an OpenAI-style 404 for a model not held carries: vLLM's, and Ollama's.
_NOT_FOUND_TYPES = ("NotFoundError", "not_found_error")
# What a v2 server (Triton, KServe, a layer-router) or Ollama says of a model it does not hold.
_UNKNOWN_MODEL = re.compile(r"unknown model|\bmodel\b.*\b(?:not found|does not exist)")


async def model_missing(forwarded: Forwarded) -> bool:
    """Whether the upstream's 404 says it does not serve the model (OpenAI's `model_not_found`,
    vLLM's NotFoundError, a v2 server's unknown model), not any other 404. A streamed error
    body is read whole here, and kept for the reply."""
    response = forwarded.response
    if response.status != 404:
        return False
    if forwarded.body is None:
        content_type = response.headers.get("Content-Type", "")
        if media_type(content_type) == "text/event-stream":
            return False
        forwarded.body = await _rest_of(forwarded)
    try:
        doc = orjson.loads(forwarded.body)
    except orjson.JSONDecodeError:
        return False
    error = doc.get("error") if isinstance(doc, dict) else None
    if error is None and isinstance(doc, dict) and doc.get("object") == "error":
        error = doc  # vLLM's before 0.10 (TensorRT-LLM's, FastChat's): the body is the object
    if isinstance(error, dict):  # OpenAI's error object
        if error.get("code") == "model_not_found":
            return True
        message = error.get("message")
        return (
            error.get("type") in _NOT_FOUND_TYPES
            and isinstance(message, str)
            and (_UNKNOWN_MODEL.search(message.lower()) is not None)
        )
    return isinstance(error, str) and _UNKNOWN_MODEL.search(error.lower()) is not None


def _rehydrated(
    body: bytes, content_type: str, headers: dict[str, str], vault: TokenVault
) -> bytes:
    """Tokens in a JSON answer, or a KServe v2 binary one (whose header length then changes),
    restored for the caller; any other body stays as it is."""
    if content_type == "application/json":
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _rehydrated_non_finite(body, vault)
        return orjson.dumps(rehydrate_json(doc, vault))
    name = next((k for k in headers if k.lower() == "inference-header-content-length"), None)
    raw = headers.get(name, "") if name is not None else ""
    if name is None or not raw.isdecimal():
        return body
    body, length = rehydrate_v2_binary(body, int(raw), vault)
    headers[name] = str(length)
    return body


def _rehydrated_non_finite(body: bytes, vault: TokenVault) -> bytes:
    """A JSON answer orjson refuses: Triton (and a layer-router) write non-finite outputs as
    bare NaN/Infinity tokens, which the stdlib reads and writes back as such; slower, but only
    such answers take this way. Anything else it cannot read either stays as it is."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return body
    return dumps_stdlib(rehydrate_json(doc, vault))


async def _rehydrate_stream(
    chunks: AsyncIterator[bytes], rehydrator: SseRehydrator
) -> AsyncIterator[bytes]:
    """Tokens restored as the stream flows: only a possible partial token is held back."""
    async for chunk in chunks:
        out = rehydrator.feed(chunk)
        if out:
            yield out
    tail = rehydrator.close()
    if tail:
        yield tail


def _served_tier(claimed: str | None, cluster: Cluster) -> str:
    """An upstream's own X-Served-By-Tier is believed only when it names a real tier at or past
    the cluster's: a chained layer-router may say `central`; nothing may say `edge` for it."""
    own = cluster.settings.tier.value
    if claimed in TIER_ORDER and TIER_ORDER.index(claimed) >= TIER_ORDER.index(own):
        return claimed
    return own


async def _streamed(forwarded: Forwarded) -> AsyncIterator[bytes]:
    """A stream's bytes: the first ones (read within the try's deadline), then the rest."""
    if forwarded.first:
        yield forwarded.first
    rest = forwarded.rest if forwarded.rest is not None else forwarded.response.chunks()
    async for chunk in rest:
        yield chunk


async def _rest_of(forwarded: Forwarded) -> bytes:
    """A streamed answer read whole (one that turned out not to be a stream)."""
    body = bytearray()
    try:
        async for chunk in _streamed(forwarded):
            body += chunk
            if len(body) > forwarded.limit:
                raise UpstreamResponseTooLarge(
                    f"{forwarded.where}: response larger than {forwarded.limit} bytes"
                )
    except BaseException:
        forwarded.response.abort()
        raise
    finally:
        forwarded.release()
    return bytes(body)


async def _relay(forwarded: Forwarded) -> AsyncIterator[bytes]:
    """Whole SSE events as they arrive; a failure after the first byte becomes StreamBroken,
    which the handler turns into an explicit error event instead of a stream that looks
    complete. Half an event is held back until its end arrives, so a cut one is dropped
    rather than glued to the error event (which would make both unreadable)."""
    completed = False
    done = False  # `data: [DONE]` went out: the answer is whole, whatever comes after it
    pending = bytearray()
    try:
        async for chunk in _streamed(forwarded):
            events = b""
            if not pending:
                end = events_end(chunk)
                if end:
                    events = chunk[:end] if end < len(chunk) else chunk
                pending += chunk[end:]
            else:
                # Only the new bytes are searched (and the last 3 held, which may begin a
                # separator): an event arriving in many pieces costs linear time, not square.
                searched = max(0, len(pending) - 3)
                pending += chunk
                end = events_end(pending, searched)
                if end:
                    events = bytes(pending[:end])
                    del pending[:end]
            if events:
                yield events
                done = ends_with_done(events)
            if len(pending) > MAX_EVENT_BYTES:
                raise UpstreamError(f"a stream event larger than {MAX_EVENT_BYTES} bytes")
        if pending:
            yield bytes(pending)
        completed = True
    except UpstreamError as exc:
        if done:
            # Silent or cut after its [DONE]: the client has the whole answer; an error event
            # after it would say otherwise (and the record would call it broken).
            return
        raise StreamBroken(f"{exc.message} after the stream started") from None
    finally:
        if not completed:  # broken, or the client went away: cancel upstream, drop the conn
            forwarded.response.abort()
        forwarded.release()


# An event is held until its end arrives: one that never ends (an upstream sending no empty
# line) must not grow here without bound. Chat events are a few hundred bytes.
MAX_EVENT_BYTES = 8 * 1024 * 1024
