"""Observability: metrics counted on the request path and read at scrape time, OpenTelemetry
tracing (off unless OTEL_TRACES_EXPORTER names an exporter)."""

from __future__ import annotations

from dataclasses import dataclass, field

from opentelemetry.sdk.trace import TracerProvider

from router.telemetry.requests import RequestMetrics


@dataclass(slots=True)
class Telemetry:
    requests: RequestMetrics = field(default_factory=RequestMetrics)
    tracer_provider: TracerProvider | None = None


__all__ = ["RequestMetrics", "Telemetry"]
