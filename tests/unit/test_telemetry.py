"""Tracing configured from OTEL_* variables, request metrics, JSON logs and aiohttp's loggers."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Iterator

import orjson
import pytest
import uvloop
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_protocol import RequestPayloadError
from opentelemetry.sdk.trace import TracerProvider

from router import logs
from router.api.respond import new_context, observe
from router.api.state import TELEMETRY, TRAIL
from router.audit.record import Digester
from router.cli import _parser, _settings
from router.settings import SiteSettings
from router.telemetry import Telemetry
from router.telemetry.requests import LATENCY_BUCKETS, RequestMetrics
from router.telemetry.tracing import provider_from_env
from router.trail import Trail


class TestProviderFromEnv:
    def test_off_by_default(self) -> None:
        """No OTEL_TRACES_EXPORTER: no provider, so tracing costs nothing."""
        assert provider_from_env({}) is None
        assert provider_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None

    def test_sdk_disabled_wins(self) -> None:
        """OTEL_SDK_DISABLED=true turns tracing off whatever the exporter says."""
        env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
        assert provider_from_env(env) is None

    @pytest.mark.parametrize("name", ["console", "otlp"])
    def test_exporters(self, name: str) -> None:
        """console and otlp (HTTP) exporters make a provider named by OTEL_SERVICE_NAME."""
        env = {
            "OTEL_TRACES_EXPORTER": name,
            "OTEL_SERVICE_NAME": "edge-7",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
        }
        provider = provider_from_env(env)
        assert isinstance(provider, TracerProvider)
        assert provider.resource.attributes["service.name"] == "edge-7"
        provider.shutdown()

    @pytest.mark.parametrize(
        "variable", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"]
    )
    def test_an_otlp_protocol_we_do_not_speak_is_an_error(self, variable: str) -> None:
        """OTLP over gRPC asked for: an error naming it, not http/protobuf sent to a gRPC port
        (every span lost, one warning per batch)."""
        env = {"OTEL_TRACES_EXPORTER": "otlp", variable: "grpc"}
        with pytest.raises(ValueError, match="'grpc' is not supported"):
            provider_from_env(env)
        env[variable] = "http/protobuf"
        provider = provider_from_env(env)
        assert provider is not None
        provider.shutdown()

    @pytest.mark.parametrize(
        "variable", ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"]
    )
    def test_a_malformed_otlp_header_is_named_never_shown(
        self, variable: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An OTLP headers entry that is no name=value is an error naming the variable; the
        collector's token in it reaches neither the error nor a log line (the SDK's warning
        quoted it whole, and exported without it)."""
        token = "colltok-canary-5f2a9c"
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
            variable: f"x-tenant=a,Authorization: Bearer {token}",
        }
        with caplog.at_level(logging.DEBUG), pytest.raises(ValueError, match=variable) as refused:
            provider_from_env(env)
        assert variable in str(refused.value)
        assert token not in str(refused.value)
        assert token not in caplog.text
        env[variable] = f"x-tenant=a,Authorization=Bearer%20{token}"
        provider = provider_from_env(env)
        assert provider is not None
        provider.shutdown()

    @pytest.mark.parametrize(
        "variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    )
    def test_an_otlp_endpoint_without_a_scheme_is_an_error(self, variable: str) -> None:
        """`collector:4318` (as gRPC exporters take it) is an error naming the variable, not
        a start whose every span batch fails ('No connection adapters were found')."""
        env = {"OTEL_TRACES_EXPORTER": "otlp", variable: "collector:4318"}
        with pytest.raises(ValueError, match=f"{variable}: .*http:// or https://"):
            provider_from_env(env)
        env[variable] = "https://collector:4318"
        provider = provider_from_env(env)
        assert provider is not None
        provider.shutdown()

    def test_unknown_exporter_is_named(self) -> None:
        """An exporter we do not know is an error naming it."""
        with pytest.raises(ValueError, match="'zipkin'"):
            provider_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_check_refuses_tracing_variables_serve_refuses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`layer-router check` reads the OTEL_* variables as `serve` does: an exporter protocol
    serve refuses at start-up is exit 2 naming the variable, not `ok`."""
    from router.cli import main

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert main(["check"]) == 2
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in capsys.readouterr().err
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    assert main(["check"]) == 0


class TestRequestMetrics:
    def test_labels_are_closed_sets(self) -> None:
        """An API or tier outside the known sets is counted as other/none, never as given."""
        metrics = RequestMetrics()
        metrics.observe("kserve-v2", "edge", 200, 0.002)
        metrics.observe("CANARY-api", "CANARY-tier", 503, 0.5)
        assert metrics.requests == {
            ("kserve-v2", "edge", "ok"): 1,
            ("other", "none", "server_error"): 1,
        }

    def test_histogram_is_cumulative(self) -> None:
        """Bucket counts are cumulative and end with +Inf holding every observation."""
        metrics = RequestMetrics()
        for seconds in (0.0001, 0.002, 1000.0):
            metrics.observe("openai", "central", 200, seconds)
        buckets = metrics.latency[("openai", "central")].cumulative()
        assert buckets[0] == (repr(LATENCY_BUCKETS[0]), 1.0)
        assert buckets[-1] == ("+Inf", 3.0)
        assert buckets[-2][1] == 2.0


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("debug", "json")
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    yield stream
    root.handlers[:], root.level = handlers, level  # pytest's own capture handlers come back


class TestLogs:
    def test_json_lines(self, captured: io.StringIO) -> None:
        """Each record is one JSON object with time, level, logger and message."""
        logging.getLogger("router.test").info("model %s loaded", "m1")
        doc = orjson.loads(captured.getvalue().splitlines()[-1])
        assert doc["level"] == "info"
        assert doc["logger"] == "router.test"
        assert doc["msg"] == "model m1 loaded"
        assert doc["ts"].endswith("Z")

    def test_lines_inside_a_span_carry_its_trace(self, captured: io.StringIO) -> None:
        """A line logged while a span is current names its trace and span; others do not."""
        tracer = TracerProvider().get_tracer("test")
        with tracer.start_as_current_span("request") as span:
            logging.getLogger("router.test").info("inside")
        logging.getLogger("router.test").info("outside")
        inside, outside = (orjson.loads(line) for line in captured.getvalue().splitlines()[-2:])
        assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
        assert inside["span_id"] == format(span.get_span_context().span_id, "016x")
        assert "trace_id" not in outside

    def test_exceptions_keep_type_and_place_only(self, captured: io.StringIO) -> None:
        """An exception's message (which may quote a request) never reaches the log."""
        try:
            raise ValueError("CANARY-4711 in the message")
        except ValueError:
            logging.getLogger("router.test").exception("failed")
        line = captured.getvalue().splitlines()[-1]
        assert "CANARY-4711" not in line
        assert orjson.loads(line)["exc_type"] == "ValueError"

    def test_access_line_in_text_format_has_the_duration(self) -> None:
        """The text format prints only the message, so the access line's message carries
        method, route template, status and duration, as the README says."""
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logger = logging.getLogger("test.access")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            request = make_mocked_request("GET", "/v2/health/ready?email=CANARY-5")
            logs.SafeAccessLogger(logger, "").log(request, web.Response(status=200), 0.0125)
        finally:
            logger.removeHandler(handler)
        (record,) = records
        message = record.getMessage()
        assert message.startswith("GET ")
        assert message.endswith(" 200 12.500ms")
        assert "CANARY" not in message

    def test_a_client_s_malformed_request_is_a_warning_not_an_error(
        self, captured: io.StringIO
    ) -> None:
        """aiohttp logs every malformed request at ERROR; a client's mistake is a warning (any
        client could otherwise flood the error log), a server-side failure stays an error."""
        server = logging.getLogger("aiohttp.server")
        for exc in (LineTooLong(b"x" * 9000, "8190"), RuntimeError("boom")):
            try:
                raise exc
            except Exception:
                server.exception("Error handling request from %s", "203.0.113.7")
        client, ours = (orjson.loads(line) for line in captured.getvalue().splitlines()[-2:])
        assert (client["level"], client["msg"]) == ("warning", "connection error: LineTooLong")
        assert ours["level"] == "error"
        assert "203.0.113.7" not in captured.getvalue()

    def test_a_client_s_undecodable_body_is_a_warning_not_an_error(
        self, captured: io.StringIO
    ) -> None:
        """A gzip body that does not inflate is answered 400, then aiohttp, reading the rest of
        it, logs RequestPayloadError as an unhandled exception: a client's mistake, a warning."""
        server = logging.getLogger("aiohttp.server")
        try:
            raise RequestPayloadError("Can not decode content-encoding: gzip")
        except RequestPayloadError:
            server.exception("Unhandled exception")
        line = orjson.loads(captured.getvalue().splitlines()[-1])
        assert (line["level"], line["msg"]) == ("warning", "connection error: RequestPayloadError")

    def test_event_loop_errors_keep_type_and_place_only(self, captured: io.StringIO) -> None:
        """A task whose exception nobody retrieved is logged by the loop with the task's repr,
        and the exception's (its message, the bytes it could not decode) within it: only its
        type and place are kept, on both loops."""
        card = "4111111111111111"

        async def fails() -> None:
            raise UnicodeDecodeError("utf-8", f"\xff card {card}".encode(), 0, 1, "bad")

        async def leave_a_task_unretrieved() -> None:
            loop = asyncio.get_running_loop()
            task = loop.create_task(fails())
            await asyncio.wait([task])
            context = {"message": "Task exception was never retrieved", "future": task}
            loop.call_exception_handler({**context, "exception": task.exception()})

        for run in (asyncio.run, uvloop.run):
            run(leave_a_task_unretrieved())
        lines = [orjson.loads(line) for line in captured.getvalue().splitlines()]
        errors = [line for line in lines if line["level"] == "error"]
        assert len(errors) == 2
        assert {e["exc_type"] for e in errors} == {"UnicodeDecodeError"}
        assert card not in captured.getvalue()

    def test_aiohttp_loggers_lose_request_bytes(self, captured: io.StringIO) -> None:
        """aiohttp.server's record of a bad request keeps the error kind, not the bytes."""
        try:
            raise RuntimeError("GET /?email=CANARY-9 HTTP/1.1")
        except RuntimeError:
            logging.getLogger("aiohttp.server").exception("Error handling request %s", "CANARY-9")
        assert "CANARY-9" not in captured.getvalue()
        assert "connection error: RuntimeError" in captured.getvalue()

    def test_default_access_log_format_is_dropped(self, captured: io.StringIO) -> None:
        """aiohttp's own access-log line (request line, query string) is filtered out."""
        logging.getLogger("aiohttp.access").info('"GET /v2?card=CANARY-5 HTTP/1.1" 200')
        assert "CANARY-5" not in captured.getvalue()


class TestAdminPortFlag:
    def test_port_zero_means_admin_port_zero(self) -> None:
        """`--port 0` (any free port) puts the admin listener on any free port too."""
        args = _parser().parse_args(["serve", "--port", "0"])
        assert _settings(args).admin.port == 0

    def test_explicit_admin_port(self) -> None:
        """--admin-port wins; by default the admin listener is on Triton's 8002."""
        args = _parser().parse_args(["serve", "--port", "0", "--admin-port", "9102"])
        assert _settings(args).admin.port == 9102
        assert _settings(_parser().parse_args(["serve"])).admin.port == 8002


class TestRequestLatencyClock:
    def test_sub_millisecond_latency_is_measured_on_uvloop(self) -> None:
        """On uvloop (whose loop clock moves in whole ms) a 0.3 ms request is timed as such."""
        app = web.Application()
        app[TRAIL] = Trail(None, Digester(b"k" * 32), SiteSettings())
        app[TELEMETRY] = Telemetry()

        async def one_request() -> None:
            request = make_mocked_request("POST", "/v2/models/m/infer", app=app)
            ctx = new_context(request, "kserve-v2", "m", None, 1000.0)
            ctx.served_tier = "edge"
            busy_until = time.perf_counter() + 0.0003
            while time.perf_counter() < busy_until:  # work on the loop: its clock stays put
                pass
            observe(app, ctx, 200)

        uvloop.run(one_request())
        histogram = app[TELEMETRY].requests.latency[("kserve-v2", "edge")]
        assert 0.0003 <= histogram.sum < 1.0
