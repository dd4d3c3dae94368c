"""OpenTelemetry tracing, configured by the standard OTEL_* variables and off by default.

Off (no OTEL_TRACES_EXPORTER, or `none`, or OTEL_SDK_DISABLED=true) there is no provider and no
tracer: the pipeline checks one attribute and runs exactly as untraced. On, each request gets a
server span continuing the caller's `traceparent`, a child span per pipeline stage, and the
upstream sees the dispatch span as its parent. Attributes come from the router's own vocabulary
(tier, cluster, outcome, error code): never request content, and exceptions are recorded by type
and code only, as their messages could quote a request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, Tracer, format_span_id, format_trace_id

from router import __version__

log = logging.getLogger(__name__)

EXPORTERS = ("otlp", "console", "none")


def provider_from_env(environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """A provider exporting where OTEL_TRACES_EXPORTER says; None when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "none").split(",")]
    exporters = [_exporter(n, environ) for n in names if n and n != "none"]
    if not exporters:
        return None
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the sampler comes
    # from OTEL_TRACES_SAMPLER (parent-based, always on, by default).
    resource = Resource.create({"service.name": "layer-router", "service.version": __version__})
    if environ.get("OTEL_SERVICE_NAME"):
        resource = resource.merge(Resource({"service.name": environ["OTEL_SERVICE_NAME"]}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for exporter in exporters:
        # Spans leave in batches from the processor's own thread, never on the event loop.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if protocol.strip().lower() != "http/protobuf":
            # Not silently http/protobuf to a port that speaks another protocol: every span lost.
            raise ValueError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: '{protocol}' is not supported; "
                "use http/protobuf (an OTLP collector's port 4318)"
            )
        _check_otlp_headers(environ)
        variable = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"  # the one in effect, as the SDK reads
        if not environ.get(variable, "").strip():
            variable = "OTEL_EXPORTER_OTLP_ENDPOINT"
        endpoint = environ.get(variable, "").strip()
        if endpoint and not endpoint.lower().startswith(("http://", "https://")):
            # As gRPC exporters take it (collector:4317): every batch would fail to send.
            # The value is not repeated: an endpoint can carry a token.
            raise ValueError(f"{variable}: the URL needs http:// or https:// before its host")
        # Reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, _CERTIFICATE itself.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise ValueError(
        f"OTEL_TRACES_EXPORTER: unknown exporter '{name}' (use one of {', '.join(EXPORTERS)})"
    )


# The exporter reads the first of these that is set (and not empty).
_OTLP_HEADERS = ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")


class _Malformed(logging.Filter):
    """Holds the SDK's own warning about a malformed header, which quotes the entry whole: a
    collector's token in a log line."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        self.seen = True
        return False


def _check_otlp_headers(environ: Mapping[str, str]) -> None:
    """An OTLP headers entry the SDK cannot read is an error naming the variable, never its
    value (it usually holds the collector's credential): the SDK would drop the entry,
    exporting without it, and log it whole."""
    name = next((n for n in _OTLP_HEADERS if environ.get(n)), None)
    if name is None:
        return
    from opentelemetry.util.re import parse_env_headers

    sdk_log = logging.getLogger(parse_env_headers.__module__)
    malformed = _Malformed()
    sdk_log.addFilter(malformed)
    try:
        parse_env_headers(environ[name], liberal=True)
    finally:
        sdk_log.removeFilter(malformed)
    if malformed.seen:
        raise ValueError(
            f"{name}: an entry is not name=value (comma-separated, URL-encoded); "
            "its value is not shown"
        )


def tracer_of(provider: TracerProvider | None) -> Tracer | None:
    return provider.get_tracer("layer-router", __version__) if provider is not None else None


def traceparent_of(span: Span) -> str:
    """The W3C header naming `span` as the parent (what an upstream continues)."""
    context = span.get_span_context()
    flags = int(context.trace_flags) & 0xFF
    return f"00-{format_trace_id(context.trace_id)}-{format_span_id(context.span_id)}-{flags:02x}"
