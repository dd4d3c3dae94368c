"""One error tree for everything a request can fail with.

    RouterError                      500 internal           (never carries request content)
    ├── BadRequest                   400 bad_request
    │   ├── MalformedBody            400 malformed_body
    │   ├── UnforwardableHeader      400 unforwardable_header (a header no HTTP/1.1 line can carry)
    │   └── InvalidTensor            400 invalid_tensor
    ├── NotFound                     404 not_found
    │   ├── ModelNotFound            404 model_not_found
    │   │   └── UpstreamModelMissing 404 model_not_found (a listed model an upstream lacks)
    │   │       └── UpstreamModelNotAllowed 404 model_not_found (an upstream's policy refuses it us)
    │   └── RouteNotFound            404 route_not_found
    ├── Unauthorized                 401 unauthorized       (no key, or one no tenant holds)
    ├── Forbidden                    403 forbidden
    │   ├── ResidencyDenied          403 residency_denied   (no compliant tier serves it)
    │   ├── ModelNotAllowed          403 model_not_allowed  (not among the tenant's models)
    │   └── SiteMismatch             403 site_mismatch      (a site's upload key, another's batch)
    ├── RequestTimeout               408 request_timeout    (the body arrived too slowly)
    ├── DetectionFailed              422 detection_failed   (unscanned; may not leave the site)
    ├── NumericTensorRedaction       422 numeric_tensor_redaction (a v2 number the tier may not see)
    │   └── NumericValueRedaction    422 numeric_value_redaction (a JSON number in an OpenAI body)
    ├── MethodNotAllowed             405 method_not_allowed
    ├── LoopDetected                 508 loop_detected      (too many layer-router hops)
    ├── PayloadTooLarge              413 payload_too_large
    ├── UnsupportedMediaType         415 unsupported_media_type
    ├── NotSupported                 501 not_supported      (a Triton API we do not offer)
    ├── RateLimited                  429 rate_limited       (Retry-After, x-ratelimit-*)
    ├── Unavailable                  503 unavailable        (Retry-After)
    │   ├── ModelNotReady            503 model_not_ready
    │   ├── QueueFull                503 queue_full
    │   ├── ShuttingDown             503 shutting_down
    │   ├── PolicyPending            503 policy_pending     (no good policy bundle yet)
    │   ├── Overloaded               503 overloaded         (limits.max_in_flight reached)
    │   ├── UpstreamOverflow         503 upstream_overflow  (our own cap; never ejects)
    │   ├── NoHealthyTarget          503 no_healthy_target
    │   └── Offline                  503 offline
    ├── DeadlineExceeded             504 deadline_exceeded
    │   └── BudgetUnmeetable         504 budget_unmeetable  (decided up front, no waiting)
    ├── NotCached                    504 not_cached         (only-if-cached, nothing stored)
    ├── InferenceFailed              500 inference_failed
    └── UpstreamError                502 upstream_error     (only upstreams/client.py raises these)
        ├── ConnectFailed            502 upstream_connect_failed
        │   └── UpstreamTlsFailed    502 upstream_tls_failed (certificate or handshake refused)
        ├── UpstreamTimeout          504 upstream_timeout
        ├── UpstreamReset            502 upstream_reset
        ├── UpstreamStatus           502 upstream_status    (5xx/429 after retries, 3xx)
        ├── UpstreamAuthFailed       502 upstream_auth_failed (the router's own credential refused)
        ├── UpstreamResponseTooLarge 502 upstream_response_too_large (over max_response_bytes)
        └── StreamBroken             502 upstream_stream_broken (after bytes reached the client)

ConfigError is separate: it stops start-up (or `layer-router check`) and is never an HTTP answer.

Messages are written by us from facts we control (names, shapes, sizes), never echo raw
request bytes: an error body or log line must not be a way for sensitive data to leak.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error a request can end with; knows its HTTP status and stable code."""

    status = 500
    code = "internal"
    retry_after: float | None = None
    headers: dict[str, str] | None = None  # extra response headers (never request content)
    # Sent as `x-should-retry` (the openai SDK's convention, read before the status): False
    # where the same request can only fail again; None leaves it to the status.
    should_retry: bool | None = None
    param: str | None = None  # the request field at fault, as OpenAI's error object names it

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)
        self.message = message


class BadRequest(RouterError):
    status = 400
    code = "bad_request"

    def __init__(self, message: str = "bad request", param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class MalformedBody(BadRequest):
    code = "malformed_body"


class UnforwardableHeader(BadRequest):
    code = "unforwardable_header"


class InvalidTensor(BadRequest):
    code = "invalid_tensor"


class NotFound(RouterError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class UpstreamModelMissing(ModelNotFound):
    """An upstream whose listing names the model answered that it does not serve it (it
    unloaded it since): the next target is tried; the client sees it only when none is left."""


class UpstreamModelNotAllowed(UpstreamModelMissing):
    """An upstream (a chained layer-router's tenant policy) refused the model to the router's
    own credential with 403 model_not_allowed: the key is good, only that model is not served
    to this router there. For this router's clients the cluster does not serve the model: the
    next target is tried, and with none left the client hears that no tier serves it to them
    (model_not_found), never a 403 that would blame the client's own tenant or key."""


class RouteNotFound(NotFound):
    code = "route_not_found"


class Forbidden(RouterError):
    status = 403
    code = "forbidden"


class ResidencyDenied(Forbidden):
    code = "residency_denied"


class ModelNotAllowed(Forbidden):
    code = "model_not_allowed"


class SiteMismatch(Forbidden):
    code = "site_mismatch"


class Unauthorized(RouterError):
    status = 401
    code = "unauthorized"


class RequestTimeout(RouterError):
    status = 408
    code = "request_timeout"


class RateLimited(RouterError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DetectionFailed(RouterError):
    status = 422
    code = "detection_failed"


class NumericTensorRedaction(RouterError):
    """A KServe v2 numeric tensor (INT64, FP64, ...) holds a value the target tier's policy
    redacts: a token, a mask, a pseudonym or an empty string in its place would not be a number,
    which a v2 server refuses (or worse, coerces), so nothing is sent. The same request
    can only fail again: the client must send the value as BYTES or have the model served
    where the value may go."""

    status = 422
    code = "numeric_tensor_redaction"
    should_retry = False


class NumericValueRedaction(NumericTensorRedaction):
    """A JSON number in an OpenAI request (its `seed`, say) holds a value the target tier's
    policy redacts: text in its place would change the field's type, which the upstream
    refuses, so nothing is sent; a later tier that may see the value still serves it."""

    code = "numeric_value_redaction"


class MethodNotAllowed(RouterError):
    status = 405
    code = "method_not_allowed"


class LoopDetected(RouterError):
    status = 508
    code = "loop_detected"
    should_retry = False


class PayloadTooLarge(RouterError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(RouterError):
    status = 415
    code = "unsupported_media_type"


class NotSupported(RouterError):
    """A part of Triton's HTTP API this router does not offer (model control, shared memory,
    trace and log settings): named as such, not an unknown route (Triton's UNSUPPORTED)."""

    status = 501
    code = "not_supported"
    should_retry = False


class Unavailable(RouterError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelNotReady(Unavailable):
    code = "model_not_ready"


class QueueFull(Unavailable):
    code = "queue_full"


class ShuttingDown(Unavailable):
    code = "shutting_down"


class PolicyPending(Unavailable):
    code = "policy_pending"


class Overloaded(Unavailable):
    code = "overloaded"


class UpstreamOverflow(Unavailable):
    code = "upstream_overflow"


class NoHealthyTarget(Unavailable):
    code = "no_healthy_target"


class Offline(Unavailable):
    code = "offline"


class DeadlineExceeded(RouterError):
    status = 504
    code = "deadline_exceeded"
    # The client's latency budget is over: an answer after it is of no use, and a client
    # library's back-off would turn our fast failure into a slow one.
    should_retry = False


class BudgetUnmeetable(DeadlineExceeded):
    code = "budget_unmeetable"


class NotCached(RouterError):
    """`Cache-Control: only-if-cached` and no stored answer fits (RFC 9111 §5.2.1.7)."""

    status = 504
    code = "not_cached"


class InferenceFailed(RouterError):
    status = 500
    code = "inference_failed"


class UpstreamError(RouterError):
    status = 502
    code = "upstream_error"
    retryable = True  # safe to try again (nothing reached the client, the request is repeatable)
    health_failure = True  # counts toward outlier ejection


class ConnectFailed(UpstreamError):
    code = "upstream_connect_failed"


class UpstreamTlsFailed(ConnectFailed):
    code = "upstream_tls_failed"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamReset(UpstreamError):
    code = "upstream_reset"


class UpstreamStatus(UpstreamError):
    code = "upstream_status"

    def __init__(
        self,
        message: str,
        upstream_status: int,
        retry_after: float | None = None,
        should_retry: bool | None = None,
    ):
        super().__init__(message)
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        # The upstream's own `x-should-retry: false` holds for us and for our client.
        self.should_retry = should_retry
        # A chained layer-router's own X-Route-Reason: why it answered this (`offline`, ...).
        self.chained_reasons = ""
        # Those reasons name a target it tried, after its own retries: it is not asked again.
        self.tried_behind = False
        self.retryable = (
            upstream_status >= 500 or upstream_status == 429
        ) and should_retry is not False
        # A 504 says the upstream ran out of time: the budget we passed on (a chained
        # router's budget_unmeetable), which tight client budgets must not turn into an
        # ejected tier.
        self.health_failure = upstream_status >= 500 and upstream_status != 504
        # "Come back later" from upstream stays "come back later" for our client, in the same
        # words: a rate limit stays a 429 (the openai SDK's RateLimitError, which callers
        # catch to slow down), unavailable a 503, and "out of time" a gateway timeout.
        self.status = upstream_status if upstream_status in (429, 503, 504) else 502


class UpstreamAuthFailed(UpstreamError):
    """An upstream answered 401/403 to the credential the router itself sends it (the
    cluster's configured `headers`): the router's failure, so the client must not be told
    that its own key is wrong. The next target is tried; the endpoint is not retried (its
    siblings get the same key) nor ejected (a key is misconfigured, the upstream is not down,
    and ejection would only hide the cause behind `no_healthy_target`)."""

    code = "upstream_auth_failed"
    retryable = False
    health_failure = False
    # Until an operator fixes the key, the same request can only fail again.
    should_retry = False

    def __init__(self, message: str, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class UpstreamResponseTooLarge(UpstreamError):
    """An answer longer than its cluster's `max_response_bytes`, which the router would have
    to hold whole: cut there, its connection closed. The same request would bring the same
    answer, so it is not retried, and the upstream did nothing wrong, so it is not ejected;
    the next target (whose cluster may allow more) is tried."""

    code = "upstream_response_too_large"
    retryable = False
    health_failure = False
    should_retry = False


class StreamBroken(UpstreamError):
    code = "upstream_stream_broken"
    retryable = False


class ConfigError(Exception):
    """A site config, model config or model artefact is invalid; names the file, key and reason."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = [f"invalid configuration in {self.source}:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class BundleRejected(ConfigError):
    """A policy bundle failed verification or validation; the active bundle stays."""

    def __init__(self, reason: str) -> None:
        super().__init__("policy bundle", [reason])
        self.reason = reason
