"""The one place where failures become HTTP responses.

Every error leaves as JSON in the protocol's shape; nothing the client sent is echoed, and an
unexpected exception is logged by type only, answering a generic 500 without a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
import math

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from router.api.current import GENERATION
from router.api.respond import CTX, client_request_id, observe, trace_headers
from router.api.state import RUNTIME, TELEMETRY, TRAIL
from router.errors import (
    MethodNotAllowed,
    NotSupported,
    PayloadTooLarge,
    RouteNotFound,
    RouterError,
    UnsupportedMediaType,
)
from router.headers import REQUEST_ID, request_id

log = logging.getLogger(__name__)

_FROM_AIOHTTP: dict[int, type[RouterError]] = {
    404: RouteNotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}
_AIOHTTP_MESSAGES = {
    404: "no such endpoint",
    405: "method not allowed on this endpoint",
    413: "request body is larger than the configured limit",
    415: "unsupported content type",
}

# Triton's HTTP API beyond KServe v2 that a site does not offer, by path prefix: its clients
# (tritonclient's load_model, register_system_shared_memory, ...) get a reason, not a 404.
_MODEL_CONTROL = (
    "model control (load/unload) is not supported: the router serves its repository and "
    "reloads it on SIGHUP or by polling"
)
_SHARED_MEMORY = "shared-memory tensors are not supported: send tensors in the request body"
_TRACE = "trace settings are not supported: tracing is set by OTEL_* variables"
_NOT_SUPPORTED = (
    ("/v2/repository/models/", _MODEL_CONTROL),
    ("/v2/systemsharedmemory", _SHARED_MEMORY),
    ("/v2/cudasharedmemory", _SHARED_MEMORY),
    ("/v2/trace", _TRACE),
    ("/v2/logging", "log settings are not supported: logging is set in the site config"),
)


def error_response(error: RouterError, request: web.Request | None = None) -> web.Response:
    """KServe's `{"error": "..."}`, or OpenAI's error object on `/v1/` paths."""
    headers = {}
    openai_face = request is not None and request.path.startswith("/v1/")
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
        if openai_face:
            # OpenAI's own, which its SDKs read first: a wait of 250 ms (an upstream's
            # retry-after-ms, a bucket's next token) is not rounded up to a whole second.
            headers["retry-after-ms"] = str(round(error.retry_after * 1000))
    if error.headers:
        headers.update(error.headers)
    if error.should_retry is not None:
        headers["x-should-retry"] = "true" if error.should_retry else "false"
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="layer-router"'
    ctx = request.get(CTX) if request is not None else None
    if ctx is not None:
        headers.update(trace_headers(ctx))
    elif request is not None:  # refused before it had a context: the id all the same
        headers[REQUEST_ID] = _early_request_id(request)
    if openai_face:
        body = orjson.dumps(
            {
                "error": {
                    "message": error.message,
                    "type": "invalid_request_error" if error.status < 500 else "server_error",
                    "param": error.param,
                    "code": error.code,
                }
            }
        )
    else:
        body = orjson.dumps({"error": error.message})
    response = web.Response(
        status=error.status, body=body, content_type="application/json", headers=headers
    )
    if error.status in (408, 413):
        response.force_close()  # the rest of the body is not worth reading
    return response


def _early_request_id(request: web.Request) -> str:
    """The id of a request refused before it had a context, checked as any other's; where
    no policy rules (an app that only mounts some routes), the client's as it is."""
    if request.get(GENERATION) is None and RUNTIME not in request.app:
        return request_id(request.headers)
    return client_request_id(request)


def from_http_exception(exc: web.HTTPException, path: str = "") -> RouterError | None:
    if exc.status == 404:
        unsupported = _not_supported(path)
        if unsupported is not None:
            return unsupported
    kind = _FROM_AIOHTTP.get(exc.status)
    return kind(_AIOHTTP_MESSAGES[exc.status]) if kind else None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        return await answer_failure(request, exc)


async def answer_failure(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to a request whose handler raised `exc` (audited and counted); re-raises
    what is not ours to answer: a client gone away, an aiohttp response we do not map."""
    if isinstance(exc, RouterError):
        return await _audited(request, error_response(exc, request))
    if isinstance(exc, web.HTTPException):
        mapped = from_http_exception(exc, request.path)
        if mapped is None:
            raise exc
        response = error_response(mapped, request)
        if "Allow" in exc.headers:  # a 405 names the methods the route takes (RFC 9110 §15.5.6)
            response.headers["Allow"] = exc.headers["Allow"]
        return await _audited(request, response)
    if isinstance(exc, ConnectionError | TimeoutError):
        await client_left(request)
        raise exc  # the client went away; aiohttp closes the connection
    log.error("unhandled %s at %s", type(exc).__name__, _where(exc))
    return await _audited(request, error_response(RouterError("internal error"), request))


async def _audited(request: web.Request, response: web.Response) -> web.Response:
    """Failed answers are part of the trail too, once a request got as far as a context."""
    ctx = request.get(CTX)
    if ctx is not None:
        body = response.body if isinstance(response.body, bytes) else None
        try:
            await request.app[TRAIL].write(ctx, response.status, body)
        except asyncio.CancelledError:
            observe(request.app, ctx, None)  # the client left while the record was written
            raise
        observe(request.app, ctx, response.status)
    else:  # refused before it was a request of ours (no such route, method, too large)
        telemetry = request.app.get(TELEMETRY)  # absent in an app that only mounts our routes
        if telemetry is not None:
            telemetry.requests.observe("other", "none", response.status, None)
    return response


async def client_left(request: web.Request) -> None:
    """A request whose client left before its answer (the handler cancelled, or its body cut
    off): once it got as far as an audit id, its record says so."""
    ctx = request.get(CTX)
    if ctx is not None:
        await request.app[TRAIL].client_gone(ctx)


def _not_supported(path: str) -> NotSupported | None:
    for prefix, reason in _NOT_SUPPORTED:
        if path.startswith(prefix):
            return NotSupported(reason)
    if path.startswith("/v2/models/") and path.endswith("/trace/setting"):
        return NotSupported(_TRACE)
    return None


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame: enough to find the bug, without the message, which
    could quote request data."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "unknown"
