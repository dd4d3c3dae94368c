"""TESTING.md row S13: representative requests carrying canary values (a local model, forwarded
chat streamed and not, a cache hit, errors), with DEBUG logging, the access log and tracing on;
the captured logs, /metrics, /status, exported spans, the spool file and the audit files hold
none of them."""

from __future__ import annotations

import io
import logging
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from router import logs
from router.resources import default_policy_bundle
from router.settings import Settings
from router.testing import AppThread, FakeUpstream, RouterThread

TIMEOUT_S = 10.0
CLIENT_LOGGERS = ("httpx", "httpcore")


def luhn_card(prefix: str = "4") -> str:
    """A random, checksum-valid card number (so detectors see a card, not digits)."""
    digits = [int(c) for c in prefix + "".join(str(secrets.randbelow(10)) for _ in range(14))]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


@dataclass
class Canaries:
    email: str = field(default_factory=lambda: f"s13.{secrets.token_hex(6)}@example.com")
    card: str = field(default_factory=luhn_card)
    secret: str = field(default_factory=lambda: f"sk-canary-{secrets.token_hex(12)}")

    def all(self) -> tuple[str, ...]:
        return (self.email, self.card, self.secret)


@dataclass
class Evidence:
    logs: str = ""
    metrics: str = ""
    status: str = ""
    spans: list[str] = field(default_factory=list)
    spool: bytes = b""
    audit: bytes = b""
    upstream: bytes = b""


def sampling_bundle(folder: Path) -> Path:
    """The default policy bundle with every answer sampled into the spool."""
    bundle = folder / "bundle"
    shutil.copytree(default_policy_bundle(), bundle)
    (bundle / "sampling.yaml").write_text(yaml.safe_dump({"default": 1.0, "models": {}}))
    return bundle


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def trace_extras(c: Canaries) -> dict[str, str]:
    """W3C tracestate and baggage whose values are canaries."""
    return {"tracestate": f"vendor={c.card},mail={c.secret}", "baggage": f"user={c.secret}"}


def send_everything(router: RouterThread, canaries: Canaries) -> int:
    """The representative requests; returns how many were sent."""
    c = canaries
    note = f"Card {c.card}, mail {c.email}"
    auth = {"Authorization": f"Bearer {c.secret}"}
    v2 = router.url + "/v2/models/color_classifier/infer"
    rgb = {"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [0.9, 0.1, 0.1]}
    chat = {"model": "gpt-test", "messages": [{"role": "user", "content": note}]}
    calls: list[tuple[str, str, dict[str, object]]] = [
        # a local model: canaries in the request id, parameters, query and headers
        (
            "POST",
            f"{v2}?mail={c.email}",
            {"json": {"id": c.email, "inputs": [rgb], "parameters": {"note": note}}},
        ),
        # the cache: the same plain request twice (a miss, then a hit)
        ("POST", v2, {"json": {"inputs": [rgb]}}),
        ("POST", v2, {"json": {"inputs": [rgb]}}),
        # forwarded chat, whole and streamed
        ("POST", f"{router.url}/v1/chat/completions?mail={c.email}", {"json": chat}),
        ("POST", f"{router.url}/v1/chat/completions", {"json": {**chat, "stream": True}}),
        # a caller's trace: its vendor state and baggage carry the canaries
        (
            "POST",
            f"{router.url}/v1/chat/completions",
            {"json": chat, "headers": {"traceparent": TRACEPARENT, **trace_extras(c)}},
        ),
        # errors: malformed JSON, an unknown model, an unknown route, a bad header, bad tensor
        ("POST", f"{router.url}/v1/chat/completions", {"content": f'{{"model": "{c.email}'}),
        (
            "POST",
            f"{router.url}/v1/chat/completions",
            {"json": {"model": "no-such-model", "messages": [{"role": "user", "content": note}]}},
        ),
        ("GET", f"{router.url}/nowhere/{c.card}?mail={c.email}", {}),
        ("POST", v2, {"content": b"{}", "headers": {"Inference-Header-Content-Length": c.card}}),
        ("POST", v2, {"json": {"inputs": [{**rgb, "data": [c.email, c.card, note]}]}}),
    ]
    with httpx.Client(timeout=TIMEOUT_S) as http:
        for method, url, options in calls:
            headers = {**auth, "X-Note": note, **options.pop("headers", {})}  # type: ignore[dict-item]
            http.request(method, url, headers=headers, **options)  # type: ignore[arg-type]
    return len(calls)


@pytest.fixture(scope="module")
def evidence(
    edge_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Evidence, Canaries, int]:
    """Run the requests against a fully observed router and collect everything it wrote."""
    folder = tmp_path_factory.mktemp("s13")
    canaries = Canaries()
    captured = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("debug", "json")
    root.handlers[0].setStream(captured)  # type: ignore[attr-defined]
    for client_side in CLIENT_LOGGERS:  # the test's own HTTP client logs the URLs it calls
        logging.getLogger(client_side).setLevel(logging.WARNING)
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    upstream = FakeUpstream(name="llm")
    found = Evidence()
    try:
        with AppThread(upstream.app) as fake:
            settings = Settings.model_validate(
                {
                    "site": {"id": "edge-s13"},
                    "models": {"repository": edge_models, "inference_threads": 1},
                    "cache": {"enabled": True},
                    "spool": {"path": folder / "spool.sqlite3"},
                    "audit": {"path": folder / "audit", "fsync": "never"},
                    "policy": {"bundle": sampling_bundle(folder)},
                    "upstreams": [
                        {
                            "name": "llm",
                            "tier": "central",
                            "protocols": ["openai"],
                            "endpoints": [{"url": fake.url}],
                            "models": ["gpt-test"],
                            "health_check": {"enabled": False},
                        }
                    ],
                }
            )
            router = RouterThread(settings, admin=True, access_log=True, tracer_provider=provider)
            with router, httpx.Client(timeout=TIMEOUT_S) as http:
                sent = send_everything(router, canaries)
                found.metrics = http.get(router.admin_url + "/metrics").text
                found.status = http.get(router.admin_url + "/status").text
        found.upstream = b"".join(r.body for r in upstream.received)
    finally:
        found.logs = captured.getvalue()
        root.handlers[:], root.level = handlers, level
        for client_side in CLIENT_LOGGERS:
            logging.getLogger(client_side).setLevel(logging.NOTSET)
    found.spans = [s.to_json() for s in spans.get_finished_spans()]
    found.spool = b"".join(p.read_bytes() for p in folder.glob("spool.sqlite3*"))
    found.audit = b"".join(
        p.read_bytes() for p in sorted((folder / "audit").rglob("*")) if p.is_file()
    )
    return found, canaries, sent


def test_sources_were_written(evidence: tuple[Evidence, Canaries, int]) -> None:
    """Every source holds something, so finding no canary in it means something."""
    found, _, sent = evidence
    assert found.logs.count('"logger":"aiohttp.access"') >= sent  # a line per request
    assert "layer_router_requests_total{" in found.metrics
    assert len(found.spans) >= sent
    assert b'"sample"' in found.spool or b"sample:" in found.spool  # answers were sampled
    assert found.audit.count(b"\n") >= sent - 2  # the unknown route and bad header had no ctx
    assert found.upstream  # the chats went upstream


def test_access_lines_join_their_request_s_trace(
    evidence: tuple[Evidence, Canaries, int],
) -> None:
    """With tracing on, a pipelined request's access line names its server span's trace and
    span (it is written after the span stopped being current), so logs and traces join."""
    found, _, _ = evidence
    lines = [orjson.loads(line) for line in found.logs.splitlines() if line.startswith("{")]
    access = [a for a in lines if a["logger"] == "aiohttp.access" and a["route"].endswith("/infer")]
    assert access
    servers = {
        (span["context"]["trace_id"], span["context"]["span_id"])
        for span in map(orjson.loads, found.spans)
        if span["kind"] == "SpanKind.SERVER"
    }
    for line in access:
        assert (f"0x{line['trace_id']}", f"0x{line['span_id']}") in servers


@pytest.mark.parametrize("source", ["logs", "metrics", "status", "spans", "spool", "audit"])
def test_no_canary_anywhere(evidence: tuple[Evidence, Canaries, int], source: str) -> None:
    """S13: no canary value (card, email, bearer secret) in any log, metric, span, spool or
    audit byte."""
    found, canaries, _ = evidence
    value = getattr(found, source)
    text = "\n".join(value) if isinstance(value, list) else value
    blob = text if isinstance(text, bytes) else text.encode()
    for canary in canaries.all():
        assert canary.encode() not in blob, f"{source} holds a canary"


def test_callers_trace_continued_without_its_state(
    evidence: tuple[Evidence, Canaries, int],
) -> None:
    """The caller's trace is continued (its id in the spans), its tracestate left out of them."""
    found, _, _ = evidence
    trace_id = TRACEPARENT.split("-")[1]
    continued = [s for s in found.spans if f'"trace_id": "0x{trace_id}"' in s]
    assert continued
    assert all('"trace_state": "[]"' in s for s in continued)
