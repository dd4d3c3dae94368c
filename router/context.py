"""The fixed, typed state of one request as it moves through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

from router.v2.codec import InferRequest


@dataclass(slots=True)
class Reply:
    """What the pipeline answers: already-encoded bytes, so any stage (or a cache) can own it."""

    body: bytes
    content_type: str = "application/json"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class RequestContext:
    api: str  # "kserve-v2" | "openai"
    model: str
    version: str | None
    deadline: float  # on the event loop's clock
    body: bytes = b""
    header_length: int | None = None  # Inference-Header-Content-Length
    infer: InferRequest | None = None  # set by DecodeInferRequest
    served_by: str = ""  # "model/version" or an upstream, once known
