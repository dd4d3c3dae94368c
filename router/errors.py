"""One error tree for everything a request can fail with.

    RouterError                      500 internal           (never carries request content)
    ├── BadRequest                   400 bad_request
    │   ├── MalformedBody            400 malformed_body
    │   └── InvalidTensor            400 invalid_tensor
    ├── NotFound                     404 not_found
    │   ├── ModelNotFound            404 model_not_found
    │   └── RouteNotFound            404 route_not_found
    ├── MethodNotAllowed             405 method_not_allowed
    ├── PayloadTooLarge              413 payload_too_large
    ├── UnsupportedMediaType         415 unsupported_media_type
    ├── Unavailable                  503 unavailable        (Retry-After)
    │   ├── ModelNotReady            503 model_not_ready
    │   ├── QueueFull                503 queue_full
    │   └── ShuttingDown             503 shutting_down
    ├── DeadlineExceeded             504 deadline_exceeded
    └── InferenceFailed              500 inference_failed

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

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)
        self.message = message


class BadRequest(RouterError):
    status = 400
    code = "bad_request"


class MalformedBody(BadRequest):
    code = "malformed_body"


class InvalidTensor(BadRequest):
    code = "invalid_tensor"


class NotFound(RouterError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RouteNotFound(NotFound):
    code = "route_not_found"


class MethodNotAllowed(RouterError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(RouterError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(RouterError):
    status = 415
    code = "unsupported_media_type"


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


class DeadlineExceeded(RouterError):
    status = 504
    code = "deadline_exceeded"


class InferenceFailed(RouterError):
    status = 500
    code = "inference_failed"


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
