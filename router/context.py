"""The fixed, typed state of one request as it moves through the pipeline."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from router.policy.decide import Decision

if TYPE_CHECKING:
    from router.audit.record import Digester


@dataclass(slots=True)
class Reply:
    """What the pipeline answers. `body` is already encoded so any stage (or a cache) can own
    it; a streamed reply has `stream` instead, drained by the handler chunk by chunk."""

    body: bytes = b""
    # The whole Content-Type value, parameters included (an upstream's charset is kept):
    # compare media types with `media_type`.
    content_type: str = "application/json"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    stream: AsyncIterator[bytes] | None = None
    # `stream` is a plain (non-SSE) answer relayed as it arrives (router.relaying): a failure
    # after its first byte cuts the connection, never an error event; the record is written
    # before its last chunk.
    passthrough: bool = False
    # How long a relayed answer's or an upstream stream's client may take no byte before it
    # is cut (the cluster's request_timeout_ms): it holds the cluster's place and the
    # upstream's connection.
    idle_s: float | None = None


@dataclass(slots=True)
class RequestContext:
    api: str  # "kserve-v2" | "openai"
    model: str
    version: str | None
    deadline: float  # on the event loop's clock
    started: float = 0.0  # arrival, on time.perf_counter() (latency metrics)
    method: str = "POST"
    path: str = ""  # path and query as received: forwarded on the same path
    hops: int = 0  # layer-routers this request already passed through
    headers: Mapping[str, str] = field(default_factory=dict)  # the client's
    request_id: str = ""
    tenant: str = ""  # set by ResolveTenant: the tenant's name (never its key)
    key_header: str | None = None  # the header (lower case) that held the tenant's key
    rate_limit: dict[str, str] | None = None  # the tenant's x-ratelimit-* headers
    traceparent: str = ""  # W3C trace context sent upstream; made when first needed
    body: bytes = b""
    header_length: int | None = None  # Inference-Header-Content-Length
    tensors: dict[str, str] | None = None  # see tensor_digests
    document: dict[str, Any] | None = None  # the parsed JSON (v2: the header part)
    # v2 with binary BYTES tensors: the header with them inlined as JSON strings, and what is
    # left of the binary part (router.v2.inline); what is scanned, redacted and forwarded.
    inlined: tuple[dict[str, Any], bytes] | None = None
    stream: bool = False  # the client asked for SSE
    decision: Decision | None = None
    served_tier: str = ""
    served_by: str = ""  # "model/version" or "cluster endpoint"
    reasons: list[str] = field(default_factory=list)
    upstream_reasons: str = ""  # an upstream layer-router's own X-Route-Reason
    upstream_ms: float | None = None
    # Privacy: set by ClassifyAndRedact.
    policy_revision: str = ""
    declared_class: str = ""  # the tenant's default, raised by X-Data-Class
    data_class: str = ""  # declared, raised by what detection found
    entities: Counter[str] = field(default_factory=Counter)  # found, per entity type
    unscanned: str = ""  # why detection could not finish: the request may not leave the site
    unsurveyed: bool = False  # not scanned, as nothing upstream served it: it may not leave
    scanner: Any = None  # the request's MemoScanner
    # A keyed digest of all the survey read (cacheable requests only): equal keys, equal content.
    content_key: bytes = b""
    vault: Any = None  # the request's TokenVault, once something was tokenized
    redactions: Counter[str] = field(default_factory=Counter)  # applied for the served tier
    views: dict[str, Any] = field(default_factory=dict)  # per tier: its redacted view, made once
    # Provenance: this answer's audit record, and for a reused answer the original's.
    audit_id: str = ""
    recorded: bool = False  # its audit record is written (or being written)
    inputs: dict[str, str] | None = None  # its inputs' audit digests, once made (Trail)
    cache: str | None = None  # the cache's verdict (HIT, MISS, STALE, BYPASS)
    cache_of: str | None = None
    model_sha256: str = ""  # of the local artefact that ran
    served_version: str = ""  # the model version that answered, when known
    served_model: str = ""  # the model that answered when not the one asked for (escalation)
    # What may need a long answer whole rather than relayed as it arrives (router.relaying):
    # the cache's lifetime for an answer that states none, when it may keep this one (0: only
    # if its Cache-Control asks); an answer shared by coalesced requests; the spool's draw
    # for this request's sample (uniform in [0, 1); None: no spool).
    cache_ttl: float | None = None
    shared: bool = False
    sample_draw: float | None = None
    # An HTTP/1.0 client tells a body's end only by its Content-Length or the connection
    # closing: a relayed answer cut short would look whole to it without the former.
    sized_only: bool = False
    # The server span's ids as hex (trace, span) when tracing is on: the access line, written
    # after the span is no longer current, names them so that it joins the request's trace.
    trace_ids: tuple[str, str] | None = None

    def tensor_digests(self, digester: Digester) -> dict[str, str]:
        """The keyed digests of the binary tensors (a `Digester.tensors` result), made once per
        request: the cache key and the audit record both name the tensors by them (one
        digester serves both), and an image-sized body costs more to hash than the rest of
        its handling."""
        if self.tensors is None:
            self.tensors = digester.tensors(self.document or {}, self.binary)
        return self.tensors

    @property
    def scanned_document(self) -> dict[str, Any] | None:
        """The document as detection reads it and redaction rewrites it."""
        return self.inlined[0] if self.inlined is not None else self.document

    @property
    def binary(self) -> memoryview:
        """The binary tensor part of a v2 body (empty for JSON-only bodies)."""
        if self.header_length is None:
            return memoryview(b"")
        return memoryview(self.body)[self.header_length :]


def media_type(content_type: str) -> str:
    """A Content-Type's media type, without parameters, in lower case (RFC 9110 §8.3.1)."""
    return content_type.partition(";")[0].strip().lower()
