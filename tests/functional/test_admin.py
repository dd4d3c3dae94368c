"""The admin listener (issue 6 items 1-2): /metrics and /status on their own port, reading the
API app's state; OpenTelemetry spans per stage continuing the caller's trace upstream."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as families

from router.api.state import RUNTIME, STATUS
from router.settings import Settings
from router.testing import AppThread, Behaviour, FakeUpstream, RouterThread

TIMEOUT_S = 10.0
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_PARENT = "b7ad6b7169203331"
V2_BODY = {
    "inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [0.9, 0.1, 0.1]}]
}


@dataclass
class Site:
    router: RouterThread
    upstream: FakeUpstream
    spans: InMemorySpanExporter
    http: httpx.Client

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = self.http.get(self.router.admin_url + "/metrics").text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def settings(edge_models: Path, upstream_url: str, spool: Path) -> Settings:
    return Settings.model_validate(
        {
            "site": {"id": "edge-obs", "tier": "edge"},
            "models": {"repository": edge_models, "inference_threads": 1},
            "cache": {"enabled": True},
            "spool": {"path": spool},
            "upstreams": [
                {
                    "name": "llm",
                    "tier": "regional",
                    "protocols": ["openai"],
                    "endpoints": [{"url": upstream_url}],
                    "models": ["gpt-test"],
                    "health_check": {"enabled": False},
                }
            ],
        }
    )


@pytest.fixture(scope="module")
def site(edge_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """An edge router with an admin listener, a regional fake LLM, a spool, spans in memory."""
    upstream = FakeUpstream(name="llm")
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    spool = tmp_path_factory.mktemp("spool") / "spool.sqlite3"
    with AppThread(upstream.app) as fake:
        config = settings(edge_models, fake.url, spool)
        with (
            RouterThread(config, admin=True, tracer_provider=provider) as router,
            httpx.Client(timeout=TIMEOUT_S) as http,
        ):
            yield Site(router, upstream, spans, http)


def chat(site: Site, **extra: object) -> httpx.Response:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}], **extra}
    return site.http.post(site.router.url + "/v1/chat/completions", json=body)


class TestListeners:
    def test_admin_routes_are_not_on_the_api_port(self, site: Site) -> None:
        """/metrics and /status answer on the admin port and 404 on the API port."""
        for path in ("/metrics", "/status"):
            assert site.http.get(site.router.admin_url + path).status_code == 200
            assert site.http.get(site.router.url + path).status_code == 404

    def test_api_routes_are_not_on_the_admin_port(self, site: Site) -> None:
        """The admin listener serves none of the API's routes."""
        assert site.http.get(site.router.admin_url + "/v2").status_code == 404


class TestMetrics:
    def test_requests_by_api_tier_and_outcome(self, site: Site) -> None:
        """A local inference, a forwarded chat and a client error are each counted by label."""
        before = site.metrics()
        url = site.router.url + "/v2/models/color_classifier/infer"
        assert site.http.post(url, json=V2_BODY).status_code == 200
        assert chat(site).status_code == 200
        assert site.http.post(url, content=b"{not json").status_code == 400
        assert site.http.get(site.router.url + "/no/such/route").status_code == 404
        after = site.metrics()

        def grew(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        total = "layer_router_requests_total"
        assert grew(total, api="kserve-v2", tier="edge", outcome="ok") == 1
        assert grew(total, api="openai", tier="regional", outcome="ok") == 1
        assert grew(total, api="kserve-v2", tier="none", outcome="client_error") == 1
        assert grew(total, api="other", tier="none", outcome="client_error") == 1
        count = "layer_router_request_duration_seconds_count"
        assert grew(count, api="openai", tier="regional") == 1
        assert grew("layer_router_upstream_requests_total", cluster="llm", tier="regional") == 1
        assert grew("layer_router_upstream_attempts_total", cluster="llm", tier="regional") == 1
        rows = "layer_router_inference_rows_total"
        assert grew(rows, model="color_classifier", version="2") == 1

    def test_cache_connectivity_spool_and_batches(self, site: Site) -> None:
        """Cache verdicts, connectivity per tier, spool depth and batch sizes are exposed."""
        url = site.router.url + "/v2/models/color_classifier/infer"
        for _ in range(2):
            assert site.http.post(url, json=V2_BODY).status_code == 200
        m = site.metrics()
        assert m[("layer_router_cache_lookups_total", (("outcome", "hit"),))] >= 1
        assert m[("layer_router_connectivity", (("state", "online"), ("tier", "regional")))] == 1
        assert m[("layer_router_connectivity", (("state", "offline"), ("tier", "regional")))] == 0
        assert m[("layer_router_spool_pending_records", ())] >= 1  # audit copies wait there
        assert m[("layer_router_spool_oldest_age_seconds", ())] >= 0
        batch = (("batch_size", "1"), ("model", "color_classifier"), ("version", "2"))
        assert m[("layer_router_inference_batches_total", batch)] >= 1
        assert (
            "layer_router_upstream_endpoint_up",
            (("cluster", "llm"), ("endpoint", "0"), ("tier", "regional")),
        ) in m

    def test_openmetrics_when_the_scraper_asks_for_it(self, site: Site) -> None:
        """Prometheus' own Accept header gets OpenMetrics, gzipped, which its parser reads."""
        accept = (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )
        headers = {"Accept": accept, "Accept-Encoding": "gzip"}
        response = site.http.get(site.router.admin_url + "/metrics", headers=headers)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.text.endswith("# EOF\n")
        names = {f.name for f in openmetrics_families(response.text)}
        assert {"layer_router_requests", "layer_router_build"} <= names  # OpenMetrics' info type

    def test_plain_text_for_other_scrapers(self, site: Site) -> None:
        """A scraper that names no format gets the text format, which the text parser reads."""
        response = site.http.get(site.router.admin_url + "/metrics")
        assert response.headers["Content-Type"].startswith("text/plain")
        assert "# EOF" not in response.text
        assert any(f.name == "layer_router_requests" for f in families(response.text))


class TestStatus:
    def test_sections(self, site: Site) -> None:
        """Status names the site, router, bundle, each model's sha256 and provider, upstream
        health, connectivity and the spool."""
        doc = site.http.get(site.router.admin_url + "/status").json()
        assert doc["site"] == {
            "id": "edge-obs",
            "tier": "edge",
            "jurisdiction": "",
            "draining": False,
        }
        assert doc["router"]["name"] == "layer-router"
        # Which process answers: a single process here; a worker's index under --workers.
        assert (doc["router"]["pid"], doc["router"]["worker"]) == (os.getpid(), None)
        assert doc["policy"]["revision"]
        model = next(m for m in doc["models"] if m["name"] == "color_classifier")
        assert len(model["sha256"]) == 64
        assert model["provider"] == "CPUExecutionProvider"
        assert doc["upstreams"][0]["cluster"] == "llm"
        assert doc["upstreams"][0]["endpoints"][0]["live"] is True
        assert doc["upstreams"][0]["endpoints"][0]["url"].startswith("http://127.0.0.1:")
        assert doc["connectivity"] == {"regional": "online"}
        assert doc["spool"]["enabled"] is True

    def test_v2_metadata_lists_models_and_revision(self, site: Site) -> None:
        """GET /v2 carries the bundle revision and each model's versions, sha256 and provider."""
        doc = site.http.get(site.router.url + "/v2").json()
        status = site.http.get(site.router.admin_url + "/status").json()
        assert doc["policy_revision"] == status["policy"]["revision"]
        model = next(m for m in doc["models"] if m["name"] == "color_classifier")
        assert {v["version"] for v in model["versions"]} == {"1", "2"}
        assert all(len(v["sha256"]) == 64 for v in model["versions"])


class TestTracing:
    def test_caller_trace_continued_through_stages_and_upstream(self, site: Site) -> None:
        """The caller's traceparent is the server span's parent, each stage has a child span,
        and the upstream continues the trace under the dispatch span."""
        site.spans.clear()
        site.upstream.received.clear()
        header = f"00-{CALLER_TRACE}-{CALLER_PARENT}-01"
        body = {"model": "gpt-test", "messages": [{"role": "user", "content": "traced"}]}
        answer = site.http.post(
            site.router.url + "/v1/chat/completions", json=body, headers={"traceparent": header}
        )
        assert answer.status_code == 200
        spans = {s.name: s for s in site.spans.get_finished_spans()}
        root = spans["layer-router openai"]
        assert f"{root.context.trace_id:032x}" == CALLER_TRACE
        assert root.parent is not None
        assert f"{root.parent.span_id:016x}" == CALLER_PARENT
        assert root.attributes is not None
        assert root.attributes["layer_router.tier"] == "regional"
        assert root.attributes["layer_router.cluster"] == "llm"
        assert root.attributes["layer_router.outcome"] == "ok"
        stages = {n for n in spans if n.startswith("stage ")}
        assert stages == {
            "stage tenant",
            "stage parse",
            "stage authorize",
            "stage classify",
            "stage cache",
            "stage route",
            "stage dispatch",
        }
        dispatch = spans["stage dispatch"]
        sent = site.upstream.received[-1].headers["traceparent"]
        assert sent == f"00-{CALLER_TRACE}-{dispatch.context.span_id:016x}-01"

    def test_streamed_answer_span_lasts_to_the_last_event(self, site: Site) -> None:
        """A stream's server span ends after its body was relayed, not when headers left."""
        site.spans.clear()
        site.upstream.behaviour.stream_delay_s = 0.05  # four events: at least 0.2 s of body
        try:
            answer = chat(site, stream=True)
        finally:
            site.upstream.behaviour.stream_delay_s = 0.0
        assert answer.status_code == 200
        assert "[DONE]" in answer.text
        spans = {s.name: s for s in site.spans.get_finished_spans()}
        root, dispatch = spans["layer-router openai"], spans["stage dispatch"]
        assert root.end_time is not None
        assert dispatch.end_time is not None
        assert root.end_time - dispatch.end_time >= 150_000_000  # ns

    def test_error_span_carries_the_code(self, site: Site) -> None:
        """A failed request's span carries its error code and status, not its message."""
        site.spans.clear()
        url = site.router.url + "/v2/models/no_such_model/infer"
        assert site.http.post(url, json=V2_BODY).status_code == 404
        root = next(s for s in site.spans.get_finished_spans() if s.name.startswith("layer-"))
        assert root.attributes is not None
        assert root.attributes["http.response.status_code"] == 404
        assert root.attributes["layer_router.error_code"] == "model_not_found"
        assert not root.events  # no exception event, whose message could quote the request


def test_no_tracer_when_tracing_is_off(edge_models: Path) -> None:
    """Without OTEL_TRACES_EXPORTER the pipelines hold no tracer: no span objects at all."""
    config = Settings.model_validate({"models": {"repository": edge_models}})
    with RouterThread(config) as router:
        assert router.app is not None
        pipelines = router.call(lambda: router.app[RUNTIME].current.pipelines)  # type: ignore[index]
        assert pipelines.v2_infer.tracer is None
        assert pipelines.openai.tracer is None


def _until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_admin_listener_has_the_api_listeners_defences(edge_models: Path) -> None:
    """The admin port (on all interfaces in the container) answers a malformed request
    without quoting it, and closes a connection whose head does not come in time, as the API
    port does."""
    settings = Settings.model_validate(
        {"models": {"repository": str(edge_models)}, "limits": {"header_timeout_s": 0.5}}
    )
    with RouterThread(settings, admin=True) as router:
        address = ("127.0.0.1", router.admin_port)
        with socket.create_connection(address, timeout=TIMEOUT_S) as bad:
            bad.sendall(b"GET /status HTTP/1.1\r\nHost: r\r\nX-Bad\x01: CANARY-7\r\n\r\n")
            reply = _until_closed(bad)
        assert reply.split(b"\r\n")[0].endswith(b"400 Bad Request")
        assert b"CANARY" not in reply
        with socket.create_connection(address, timeout=5) as slow:
            slow.sendall(b"GET /status HTTP/1.1\r\nHost: r\r\n")
            assert _until_closed(slow) == b""  # the head deadline, not the client's 5 s


def test_probes_answer_on_the_admin_port_while_the_api_port_is_full(edge_models: Path) -> None:
    """With the API port at its connection cap (new connections refused 503), the admin
    port still answers liveness 200 and the API's readiness: a busy router is not restarted."""
    settings = Settings.model_validate(
        {"models": {"repository": str(edge_models)}, "limits": {"max_connections": 2}}
    )
    with RouterThread(settings, admin=True) as router:
        held = [socket.create_connection(("127.0.0.1", router.port), timeout=5) for _ in range(2)]
        try:
            assert wait_until_full(router)
            with httpx.Client(timeout=TIMEOUT_S) as http:
                assert http.get(router.admin_url + "/v2/health/live").status_code == 200
                assert http.get(router.admin_url + "/v2/health/ready").status_code == 200
                api = router.app
                assert api is not None
                router.call(lambda: setattr(api[STATUS], "draining", True))
                assert http.get(router.admin_url + "/v2/health/ready").status_code == 503
                assert http.get(router.admin_url + "/v2/health/live").status_code == 200
        finally:
            for sock in held:
                sock.close()


def wait_until_full(router: RouterThread) -> bool:
    """True once a new connection to the API port is refused with 503 (the cap is reached;
    the held connections are counted as soon as the loop accepts them)."""
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", router.port), timeout=5) as probe:
            probe.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
            if b" 503 " in _until_closed(probe).split(b"\r\n")[0]:
                return True
    return False


def requests_counted(http: httpx.Client, router: RouterThread, **labels: str) -> float:
    """requests_total summed over the samples carrying `labels`, once it is at least 1 (or
    after TIMEOUT_S): the count is made when the router notices the client left."""
    give_up = time.monotonic() + TIMEOUT_S
    counted = 0.0
    while counted < 1 and time.monotonic() < give_up:
        time.sleep(0.05)
        text = http.get(router.admin_url + "/metrics").text
        counted = sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "layer_router_requests_total" and labels.items() <= s.labels.items()
        )
    return counted


def test_a_stream_its_client_left_is_counted(edge_models: Path, tmp_path: Path) -> None:
    """A chat stream whose client leaves after the first event is still counted in requests
    and latency (as an answer whose client left is): the counters add up to what was served."""
    upstream = FakeUpstream(name="llm", behaviour=Behaviour(stream_chunks=40, stream_delay_s=0.05))
    with AppThread(upstream.app) as fake:
        config = settings(edge_models, fake.url, tmp_path / "spool.sqlite3")
        with RouterThread(config, admin=True) as router, httpx.Client(timeout=TIMEOUT_S) as http:
            body = {
                "model": "gpt-test",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
            with http.stream("POST", router.url + "/v1/chat/completions", json=body) as answer:
                assert answer.status_code == 200
                next(answer.iter_raw())
            assert requests_counted(http, router, api="openai", outcome="ok", tier="regional") == 1


def test_a_request_its_client_left_before_the_answer_is_counted(
    edge_models: Path, tmp_path: Path
) -> None:
    """A chat request whose client gives up while the upstream is still thinking is counted
    (outcome client_closed, as nginx's 499), not lost from requests_total and the latency."""
    upstream = FakeUpstream(name="llm", behaviour=Behaviour(delay_s=3.0))
    with AppThread(upstream.app) as fake:
        config = settings(edge_models, fake.url, tmp_path / "spool.sqlite3")
        with RouterThread(config, admin=True) as router, httpx.Client(timeout=TIMEOUT_S) as http:
            body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
            with pytest.raises(httpx.ReadTimeout):
                http.post(router.url + "/v1/chat/completions", json=body, timeout=0.3)
            assert requests_counted(http, router, api="openai", outcome="client_closed") == 1
