"""Header and framing hygiene at the proxy boundary (TESTING.md S5, S6, S10), judged on what a
recording fake upstream actually received. Requests are written on raw sockets so that every
header, framing and request-target form is exactly what the test says.

S5: hop-by-hop, Connection-named and client-sent internal headers never reach an upstream, and
    the internal headers of a response are always ours.
S6: the declared Content-Length is the length of the body sent, one message per request.
S10: no request target, Host or Forwarded header can make the router contact anything but a
    configured upstream, and upstream redirects are never followed."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from router.api.state import UPSTREAMS
from router.policy.bundle import load_bundle
from router.resources import default_policy_bundle
from router.settings import Settings
from router.testing import AppThread, Behaviour, FakeUpstream, Recorded, RouterThread
from router.upstreams.cluster import Counters

TIMEOUT_S = 30.0
CHAT = "/v1/chat/completions"
CHAT_BODY = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
V2_BODY = orjson.dumps(
    {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.5]}]}
)
FRESH_ID = re.compile(r"^[0-9a-f]{32}$")
INTERNAL_REQUEST_HEADERS = {
    "X-Served-By-Tier": "central",
    "X-Route-Reason": "client-says",
    "X-Cache": "HIT",
    "X-Audit-Id": "audit-from-client",
    "X-Redactions": "0",
    "X-Policy-Revision": "999",
    "Forwarded": "for=203.0.113.9;host=evil.example;proto=https",
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "X-Real-IP": "203.0.113.9",
    "True-Client-IP": "203.0.113.9",
    "CF-Connecting-IP": "203.0.113.9",
    "Fastly-Client-IP": "203.0.113.9",
    "X-Client-IP": "203.0.113.9",
    "X-Cluster-Client-IP": "203.0.113.9",
    "X-Layer-Router-Tenant": "admin",
    "x-layer-router-anything": "1",
}
# What the fake upstream adds to each of its responses: ours to replace, or to drop.
UPSTREAM_RESPONSE_HEADERS = {
    "X-Cache": "HIT-upstream",
    "X-Audit-Id": "audit-from-upstream",
    "X-Redactions": "7",
    "X-Policy-Revision": "1",
    "X-Layer-Router-Debug": "upstream-internal",
    "Server-Timing": "upstream-secret;dur=1",
    "Set-Cookie": "session=upstream",
    "X-Upstream-Note": "relayed",
}

POLICY_REVISION = load_bundle(default_policy_bundle()).revision


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Site:
    router: RouterThread
    up: FakeUpstream
    redirector: FakeUpstream
    target: FakeUpstream
    up_host: str  # 127.0.0.1:PORT of the configured upstream
    decoy: socket.socket  # listens, never accepts: any connection to it is a leak
    decoy_port: int

    def post(self, path: str, body: bytes, headers: list[tuple[str, str]] | None = None) -> Reply:
        return exchange(self.router.port, request_bytes("POST", path, body, headers or []))

    def assert_decoy_untouched(self) -> None:
        """No connection is waiting on the decoy's listening socket."""
        self.decoy.setblocking(False)
        try:
            conn, _ = self.decoy.accept()
        except BlockingIOError:
            return
        conn.close()
        pytest.fail("a host that is not a configured upstream was contacted")


def request_bytes(
    method: str,
    target: str,
    body: bytes,
    headers: list[tuple[str, str]],
    *,
    host: str = "127.0.0.1",
    framing: str = "length",
) -> bytes:
    """An HTTP/1.1 request as written on the wire; the connection closes after the answer."""
    names = {name.lower() for name, _ in headers}
    lines = [f"{method} {target} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {host}")
    if "connection" not in names:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in headers]
    if framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        half = len(body) // 2
        payload = b"".join(
            b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]) if part
        )
        payload += b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def exchange(port: int, raw: bytes) -> Reply:
    """Send `raw`, read until the server closes, parse the one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    return Reply(int(status_line.split()[1]), headers, body)


def with_response_headers(fake: FakeUpstream) -> Any:
    def build() -> web.Application:
        app = fake.app()

        async def add(request: web.Request, response: web.StreamResponse) -> None:
            for name, value in UPSTREAM_RESPONSE_HEADERS.items():
                response.headers[name] = value

        app.on_response_prepare.append(add)
        return app

    return build


def cluster(name: str, tier: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "tier": tier,
        "endpoints": [{"url": url}],
        "health_check": {"interval_s": 0.2, "timeout_s": 2.0},
        "retry": {"base_backoff_ms": 5, "max_backoff_ms": 20},
        **extra,
    }


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """A router with three clusters: `main` (an API key of its own), `authy` (forwards the
    client's Authorization) on one recording fake, and `redirecting`, which answers 302."""
    up = FakeUpstream(name="up", models=("gpt-test",), v2_models=("echo_model",))
    target = FakeUpstream(name="target", models=())
    redirector = FakeUpstream(
        name="redirector", models=("gpt-redirect",), v2_models=("redirect_model",)
    )
    decoy = socket.socket()
    decoy.bind(("127.0.0.1", 0))
    decoy.listen(16)
    decoy_port = int(decoy.getsockname()[1])
    with (
        decoy,
        AppThread(with_response_headers(up)) as up_server,
        AppThread(target.app) as target_server,
        AppThread(redirector.app) as redirector_server,
    ):
        redirector.behaviour = Behaviour(redirect_to=target_server.url + CHAT)
        settings = Settings.model_validate(
            {
                "site": {"id": "edge-hygiene", "tier": "edge"},
                "models": {"repository": None, "inference_threads": 1},
                "cache": {"enabled": False},  # every request must reach the fake
                "upstreams": [
                    cluster("main", "regional", up_server.url, headers={"X-Api-Key": "cluster"}),
                    cluster(
                        "authy",
                        "central",
                        up_server.url,
                        models=["gpt-auth"],
                        forward_authorization=True,
                    ),
                    cluster("redirecting", "central", redirector_server.url),
                ],
            }
        )
        with RouterThread(settings) as router:
            yield Site(router, up, redirector, target, up_server.host_port, decoy, decoy_port)


def received_one(site: Site, send: Any) -> tuple[Reply, Recorded]:
    """Run `send()`, check it cost exactly one upstream message, return both sides."""
    before = len(site.up.received)
    reply = send()
    assert len(site.up.received) == before + 1, "one message upstream per request"
    return reply, site.up.received[-1]


class TestHopByHop:
    """S5: headers meant for one hop stop at the router."""

    HOP_BY_HOP = [
        ("Connection", "close, X-Hop-Secret, x-other-secret"),
        ("X-Hop-Secret", "hop-1"),
        ("X-Other-Secret", "hop-2"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
        ("Proxy-Connection", "keep-alive"),
        ("X-End-To-End", "kept"),
    ]

    @pytest.mark.parametrize(
        ("path", "body"), [(CHAT, CHAT_BODY), ("/v2/models/echo_model/infer", V2_BODY)]
    )
    def test_never_reach_upstream(self, site: Site, path: str, body: bytes) -> None:
        """Hop-by-hop headers and those the client's Connection names are not forwarded; an
        end-to-end header is."""
        reply, seen = received_one(site, lambda: site.post(path, body, self.HOP_BY_HOP))
        assert reply.status == 200
        for name, _ in self.HOP_BY_HOP[:-1]:
            assert name not in seen.headers, name
        assert "Transfer-Encoding" not in seen.headers
        assert seen.headers["X-End-To-End"] == "kept"


class TestInternalHeaders:
    """S5: headers that only the router may set."""

    def test_client_copies_never_reach_upstream(self, site: Site) -> None:
        """Internal headers a client sends are dropped; the hop count, the tenant (for the next
        router's cache scope) and the request's class (for its residency rules) are issued by
        us."""
        headers = [*INTERNAL_REQUEST_HEADERS.items(), ("X-Layer-Router-Hops", "2")]
        reply, seen = received_one(site, lambda: site.post(CHAT, CHAT_BODY, headers))
        assert reply.status == 200
        for name in INTERNAL_REQUEST_HEADERS:
            if name != "X-Layer-Router-Tenant":  # ours, with the tenant we resolved
                assert name not in seen.headers, name
        ours = [(k, v) for k, v in seen.headers.items() if k.lower().startswith("x-layer-router-")]
        # The client's tenant claim only narrows the scope, as a keyed digest after ours.
        tenant = seen.headers["X-Layer-Router-Tenant"]
        assert tenant.startswith("anonymous>")
        assert INTERNAL_REQUEST_HEADERS["X-Layer-Router-Tenant"] not in tenant
        assert ours == [
            ("X-Layer-Router-Hops", "3"),
            ("X-Layer-Router-Tenant", tenant),
            ("X-Layer-Router-Declared-Class", "internal"),
        ]

    def test_response_carries_only_ours(self, site: Site) -> None:
        """The client's and the upstream's internal headers never come back; ours do, once;
        an upstream's end-to-end header is relayed."""
        reply = site.post(CHAT, CHAT_BODY, list(INTERNAL_REQUEST_HEADERS.items()))
        assert reply.status == 200
        assert reply.headers.getall("X-Served-By-Tier") == ["regional"]
        assert reply.headers.getall("X-Route-Reason") == ["forward:main"]
        (timing,) = reply.headers.getall("Server-Timing")
        assert timing.startswith("upstream;dur=")
        # Ours, now that a policy bundle is in force: the revision, never the client's copy.
        assert reply.headers.getall("X-Policy-Revision") == [POLICY_REVISION]
        assert reply.headers.getall("X-Cache") == ["BYPASS"]  # ours: the cache is off here
        (audit_id,) = reply.headers.getall("X-Audit-Id")  # ours, a fresh id, not the client's
        assert audit_id != INTERNAL_REQUEST_HEADERS["X-Audit-Id"]
        for name in (
            "X-Redactions",
            "Forwarded",
            "X-Forwarded-For",
            "X-Layer-Router-Tenant",
            "X-Layer-Router-Debug",
            "Set-Cookie",
        ):
            assert name not in reply.headers, name
        assert reply.headers["X-Upstream-Note"] == "relayed"

    def test_internal_headers_on_errors_are_ours(self, site: Site) -> None:
        """An error answer does not echo the client's internal headers either."""
        body = orjson.dumps({"model": "nobody-serves-this", "messages": []})
        reply = site.post(CHAT, body, list(INTERNAL_REQUEST_HEADERS.items()))
        assert reply.status == 404
        assert "X-Served-By-Tier" not in reply.headers
        assert "X-Cache" not in reply.headers
        assert reply.headers.get("X-Route-Reason", "") != "client-says"


class TestCredentials:
    """S5: the client's credentials and the cluster's own headers."""

    def test_authorization_not_forwarded_by_default(self, site: Site) -> None:
        """The client's Authorization stays here; the cluster's key is added instead."""
        headers = [("Authorization", "Bearer client-token")]
        _, seen = received_one(site, lambda: site.post(CHAT, CHAT_BODY, headers))
        assert "Authorization" not in seen.headers
        assert seen.headers.getall("X-Api-Key") == ["cluster"]

    def test_cookies_not_forwarded_by_default(self, site: Site) -> None:
        """The client's cookies (its session with the site in front) stay here as its
        Authorization does; a cluster that forwards the client's credentials gets them."""
        headers = [("Cookie", "session=sk-canary-4e1f"), ("Cookie", "mail=c@example.com")]
        _, seen = received_one(site, lambda: site.post(CHAT, CHAT_BODY, headers))
        assert "Cookie" not in seen.headers
        body = orjson.dumps({"model": "gpt-auth", "messages": [{"role": "user", "content": "x"}]})
        _, seen = received_one(site, lambda: site.post(CHAT, body, headers))
        assert seen.headers.getall("Cookie") == ["session=sk-canary-4e1f; mail=c@example.com"]

    @pytest.mark.parametrize("name", ["X-Api-Key", "x-api-key", "X-API-KEY"])
    def test_client_cannot_add_to_cluster_header(self, site: Site, name: str) -> None:
        """A client's header of the same name, in any case, never rides next to the cluster's."""
        _, seen = received_one(site, lambda: site.post(CHAT, CHAT_BODY, [(name, "client-key")]))
        assert seen.headers.getall("X-Api-Key") == ["cluster"]

    def test_authorization_forwarded_when_configured(self, site: Site) -> None:
        """A cluster with forward_authorization gets the client's Authorization unchanged."""
        body = orjson.dumps({"model": "gpt-auth", "messages": [{"role": "user", "content": "x"}]})
        headers = [("Authorization", "Bearer client-token"), ("Proxy-Authorization", "Basic x")]
        reply, seen = received_one(site, lambda: site.post(CHAT, body, headers))
        assert reply.status == 200
        assert reply.headers["X-Route-Reason"] == "forward:authy"
        assert seen.headers.getall("Authorization") == ["Bearer client-token"]
        assert "Proxy-Authorization" not in seen.headers
        assert "X-Api-Key" not in seen.headers


class TestFraming:
    """S6: what is declared is what is sent, once."""

    @pytest.mark.parametrize("framing", ["length", "chunked"])
    def test_openai_body(self, site: Site, framing: str) -> None:
        """A chat body, sent with Content-Length or chunked, arrives with a Content-Length that
        matches it, unchunked and unchanged."""
        raw = request_bytes("POST", CHAT, CHAT_BODY, [], framing=framing)
        reply, seen = received_one(site, lambda: exchange(site.router.port, raw))
        assert reply.status == 200
        assert seen.body == CHAT_BODY
        assert int(seen.headers["Content-Length"]) == len(seen.body)
        assert "Transfer-Encoding" not in seen.headers

    @pytest.mark.parametrize("framing", ["length", "chunked"])
    def test_v2_body_rewritten(self, site: Site, framing: str) -> None:
        """A v2 header grows by the forwarded timeout; Content-Length is the new length."""
        raw = request_bytes("POST", "/v2/models/echo_model/infer", V2_BODY, [], framing=framing)
        reply, seen = received_one(site, lambda: exchange(site.router.port, raw))
        assert reply.status == 200
        assert len(seen.body) > len(V2_BODY)
        assert int(seen.headers["Content-Length"]) == len(seen.body)
        doc = orjson.loads(seen.body)
        assert doc["inputs"] == orjson.loads(V2_BODY)["inputs"]
        assert doc["parameters"]["timeout"] > 0

    @pytest.mark.parametrize(
        "content_type", [None, "text/plain", "application/json; charset=latin-1"]
    )
    def test_json_content_type_set(self, site: Site, content_type: str | None) -> None:
        """Whatever the client declared, a JSON body goes upstream as application/json."""
        headers = [("Content-Type", content_type)] if content_type else []
        for path, body in ((CHAT, CHAT_BODY), ("/v2/models/echo_model/infer", V2_BODY)):
            _, seen = received_one(site, lambda p=path, b=body: site.post(p, b, headers))
            assert seen.headers.getall("Content-Type") == ["application/json"]


class TestHeaderBytes:
    """Header values that are not ASCII, as the upstream receives them."""

    @pytest.mark.parametrize(
        "raw", ["日本語".encode(), "café".encode(), b"caf\xe9"], ids=["cjk", "utf8", "latin1"]
    )
    def test_non_ascii_value_passes_byte_for_byte(self, site: Site, raw: bytes) -> None:
        """UTF-8 text or a stray latin-1 byte in a header value reaches the upstream as the
        client sent it: not re-encoded, and never a 502 that counts against the upstream."""
        failures = site.router.call(lambda: cluster_counters(site).failures)
        reply, seen = received_one(
            site, lambda: site.post(CHAT, CHAT_BODY, [("X-Note", raw.decode("latin-1"))])
        )
        assert reply.status == 200, reply.body
        assert seen.headers["X-Note"].encode("utf-8", "surrogateescape") == raw
        assert site.router.call(lambda: cluster_counters(site).failures) == failures


def cluster_counters(site: Site) -> Counters:
    app = site.router.app
    assert app is not None
    return app[UPSTREAMS].clusters["main"].counters


class TestIds:
    """X-Request-Id and traceparent, as the upstream and the client see them."""

    def test_request_id_propagated(self, site: Site) -> None:
        """A well-formed client id goes upstream and comes back unchanged."""
        reply, seen = received_one(
            site, lambda: site.post(CHAT, CHAT_BODY, [("x-request-id", "client-id.42")])
        )
        assert seen.headers.getall("X-Request-Id") == ["client-id.42"]
        assert reply.headers.getall("X-Request-Id") == ["client-id.42"]

    @pytest.mark.parametrize("given", [None, "has spaces in it", "x" * 200, 'quote"d'])
    def test_request_id_generated(self, site: Site, given: str | None) -> None:
        """Without a usable client id one is generated, the same upstream and in the answer."""
        headers = [("X-Request-Id", given)] if given is not None else []
        reply, seen = received_one(site, lambda: site.post(CHAT, CHAT_BODY, headers))
        (sent,) = seen.headers.getall("X-Request-Id")
        assert FRESH_ID.match(sent)
        assert reply.headers["X-Request-Id"] == sent

    @pytest.mark.parametrize("given", ["4111111111111111", "order-4111-1111-1111-1111"])
    def test_request_id_holding_personal_data_is_replaced(self, site: Site, given: str) -> None:
        """A client id that detection would redact (a card number) neither goes upstream nor
        comes back: a fresh one stands in for it, the same on both sides."""
        headers = [("X-Request-Id", given)]
        reply, seen = received_one(site, lambda: site.post(CHAT, CHAT_BODY, headers))
        (sent,) = seen.headers.getall("X-Request-Id")
        assert FRESH_ID.match(sent)
        assert reply.headers["X-Request-Id"] == sent

    @pytest.mark.parametrize(
        ("path", "headers"),
        [
            (CHAT, [("X-Latency-Budget-Ms", "soon")]),  # refused before routing begins
            ("/v1/no-such-endpoint", []),
            ("/v2/models/echo_model/infer", [("X-Latency-Budget-Ms", "-1")]),
        ],
        ids=["bad-budget", "no-route", "v2-bad-budget"],
    )
    def test_request_id_on_early_errors(
        self, site: Site, path: str, headers: list[tuple[str, str]]
    ) -> None:
        """An error raised before the request is routed still carries X-Request-Id: the
        client's when well-formed and holding nothing detection finds (a card number), else a
        fresh one."""
        given = site.post(path, CHAT_BODY, [*headers, ("X-Request-Id", "early-1")])
        assert given.status in (400, 404)
        assert given.headers.getall("X-Request-Id") == ["early-1"]
        fresh = site.post(path, CHAT_BODY, headers)
        assert FRESH_ID.match(fresh.headers["X-Request-Id"])
        card = site.post(path, CHAT_BODY, [*headers, ("X-Request-Id", "4111111111111111")])
        assert card.status == given.status
        assert FRESH_ID.match(card.headers["X-Request-Id"])

    def test_traceparent_continued(self, site: Site) -> None:
        """The upstream sees the caller's trace id with a new span id."""
        trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        headers = [("traceparent", f"00-{trace_id}-{span_id}-01")]
        _, seen = received_one(site, lambda: site.post(CHAT, CHAT_BODY, headers))
        (sent,) = seen.headers.getall("traceparent")
        version, seen_trace, seen_span, flags = sent.split("-")
        assert (version, seen_trace, flags) == ("00", trace_id, "01")
        assert re.fullmatch(r"[0-9a-f]{16}", seen_span)
        assert seen_span != span_id

    def test_traceparent_started(self, site: Site) -> None:
        """Without a valid traceparent a new trace starts."""
        headers = [("traceparent", "not-a-trace")]
        _, seen = received_one(site, lambda: site.post(CHAT, CHAT_BODY, headers))
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", seen.headers["traceparent"])

    def test_tracestate_travels_with_its_trace(self, site: Site) -> None:
        """The caller's tracestate goes upstream beside the trace it belongs to."""
        trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        headers = [("traceparent", trace), ("tracestate", "congo=t61rcWkgMzE")]
        _, seen = received_one(site, lambda: site.post(CHAT, CHAT_BODY, headers))
        assert seen.headers.getall("tracestate") == ["congo=t61rcWkgMzE"]

    @pytest.mark.parametrize("given", [None, "not-a-trace", f"00-{'0' * 32}-00f067aa0ba902b7-01"])
    def test_tracestate_of_a_trace_not_continued_is_dropped(
        self, site: Site, given: str | None
    ) -> None:
        """A tracestate whose traceparent is absent or invalid is not sent upstream with the
        new trace that replaces it (W3C Trace Context §3.3)."""
        headers = [("Tracestate", "congo=t61rcWkgMzE")]
        if given is not None:
            headers.append(("traceparent", given))
        _, seen = received_one(site, lambda: site.post(CHAT, CHAT_BODY, headers))
        assert "tracestate" not in seen.headers
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", seen.headers["traceparent"])


class TestNoSsrf:
    """S10: only configured upstreams are ever contacted; redirects are never followed."""

    def test_absolute_form_target(self, site: Site) -> None:
        """An absolute-form request target naming another host is served by the configured
        upstream, on the path alone; the named host gets no connection."""
        decoy = f"127.0.0.1:{site.decoy_port}"
        for path, body in ((CHAT, CHAT_BODY), ("/v2/models/echo_model/infer", V2_BODY)):
            raw = request_bytes("POST", f"http://{decoy}{path}", body, [], host=decoy)
            reply, seen = received_one(site, lambda r=raw: exchange(site.router.port, r))
            assert reply.status == 200
            assert seen.path.startswith(path)
            assert seen.headers["Host"] == site.up_host
        site.assert_decoy_untouched()

    def test_spoofed_host_and_forwarded(self, site: Site) -> None:
        """Host, Forwarded and X-Forwarded-Host naming another server change nothing."""
        decoy = f"127.0.0.1:{site.decoy_port}"
        headers = [
            ("Host", decoy),
            ("Forwarded", f"host={decoy};proto=http"),
            ("X-Forwarded-Host", decoy),
            ("X-Forwarded-Proto", "http"),
        ]
        reply, seen = received_one(site, lambda: site.post(CHAT, CHAT_BODY, headers))
        assert reply.status == 200
        assert seen.headers["Host"] == site.up_host
        assert decoy not in str(list(seen.headers.values()))
        site.assert_decoy_untouched()

    @pytest.mark.parametrize(
        ("path", "model"),
        [(CHAT, "gpt-redirect"), ("/v2/models/redirect_model/infer", None)],
        ids=["openai", "kserve-v2"],
    )
    def test_redirect_not_followed(self, site: Site, path: str, model: str | None) -> None:
        """An upstream's 302 is a 502 upstream_status; the redirect target sees nothing, and
        even a retryable v2 request is sent once."""
        body = (
            orjson.dumps({"model": model, "messages": [{"role": "user", "content": "x"}]})
            if model
            else V2_BODY
        )
        before = len(site.redirector.received)
        reply = site.post(path, body)
        assert reply.status == 502
        error = reply.json()["error"]
        message = error["message"] if isinstance(error, dict) else error
        assert "not followed" in message
        if isinstance(error, dict):
            assert error["code"] == "upstream_status"
        assert "Location" not in reply.headers
        assert len(site.redirector.received) == before + 1
        assert site.target.received == []
        site.assert_decoy_untouched()


@pytest.fixture(scope="module")
def plain_site() -> Iterator[tuple[RouterThread, FakeUpstream]]:
    """A router with one regional cluster on a fake upstream whose answers a test sets."""
    fake = FakeUpstream(name="plain", models=("gpt-test",))
    with AppThread(fake.app) as up_server:
        settings = Settings.model_validate(
            {
                "models": {"repository": None, "inference_threads": 1},
                "cache": {"enabled": False},
                "upstreams": [cluster("plain", "regional", up_server.url)],
            }
        )
        with RouterThread(settings) as router:
            yield router, fake


class TestContentType:
    @pytest.mark.parametrize(
        ("status", "content_type", "body"),
        [
            (400, "text/plain; charset=iso-8859-1", "café refusé".encode("latin-1")),
            (200, "text/html;charset=Shift_JIS", "こんにちは".encode("shift_jis")),
            (200, "application/json; charset=utf-8", b'{"text": "caf\xc3\xa9"}'),
        ],
    )
    def test_upstream_content_type_kept_whole(
        self,
        plain_site: tuple[RouterThread, FakeUpstream],
        status: int,
        content_type: str,
        body: bytes,
    ) -> None:
        """A body passed through keeps the upstream's whole Content-Type, its charset
        included, so the client decodes the bytes as the upstream meant them."""
        router, fake = plain_site
        fake.behaviour = Behaviour(
            fail_status=status, fail_body=body, fail_headers={"Content-Type": content_type}
        )
        try:
            reply = exchange(router.port, request_bytes("POST", CHAT, CHAT_BODY, []))
        finally:
            fake.behaviour = Behaviour()
        assert reply.status == status
        assert reply.headers.getall("Content-Type") == [content_type]
        assert reply.body == body
