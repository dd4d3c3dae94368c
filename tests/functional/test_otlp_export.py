"""Spans leave by OTLP over HTTP to whatever OTEL_EXPORTER_OTLP_ENDPOINT names, configured by
the standard variables alone (issue 6 item 1)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from router.settings import Settings
from router.testing import AppThread, RouterThread

V2_BODY = {
    "inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [0.9, 0.1, 0.1]}]
}


class Collector:
    """A stand-in OTLP/HTTP collector that keeps every export request."""

    def __init__(self) -> None:
        self.exports: list[ExportTraceServiceRequest] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        self.exports.append(ExportTraceServiceRequest.FromString(await request.read()))
        return web.Response(content_type="application/x-protobuf", body=b"")


def test_otlp_export_from_environment(edge_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_TRACES_EXPORTER=otlp with an endpoint and a service name: the request's spans
    reach the collector, named by OTEL_SERVICE_NAME, by the time the router has stopped."""
    collector = Collector()
    with AppThread(collector.app) as fake:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", fake.url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-otlp-test")
        settings = Settings.model_validate({"models": {"repository": edge_models}})
        with RouterThread(settings) as router:
            url = router.url + "/v2/models/color_classifier/infer"
            assert httpx.post(url, json=V2_BODY, timeout=10).status_code == 200
        # stopping the router shut its provider down, which flushed the batch
        exports = list(collector.exports)
    spans = [
        (resource.resource, span)
        for export in exports
        for resource in export.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = {span.name for _, span in spans}
    assert {"layer-router kserve-v2", "stage dispatch"} <= names
    services = {
        attr.value.string_value
        for resource, _ in spans
        for attr in resource.attributes
        if attr.key == "service.name"
    }
    assert services == {"edge-otlp-test"}
