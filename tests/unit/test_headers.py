"""router/headers.py: what crosses the proxy boundary in each direction, and the ids we own."""

from __future__ import annotations

import re

import pytest
from multidict import CIMultiDict

from router.headers import (
    HOP_BY_HOP,
    HOPS,
    INTERNAL,
    MAX_HOPS,
    REISSUED,
    downstream_response_headers,
    hops,
    request_id,
    traceparent,
    upstream_request_headers,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")
FRESH_ID = re.compile(r"^[0-9a-f]{32}$")


def forwarded(
    headers: list[tuple[str, str]], *, auth: bool = False, extra: dict[str, str] | None = None
) -> dict[str, str]:
    return upstream_request_headers(
        CIMultiDict(headers), forward_authorization=auth, extra=extra or {}
    )


def lower_names(headers: dict[str, str]) -> set[str]:
    return {name.lower() for name in headers}


class TestUpstreamRequestHeaders:
    """The client's headers as an upstream may see them."""

    def test_end_to_end_headers_pass_unchanged(self) -> None:
        """Ordinary end-to-end headers keep their name, case and value."""
        sent = [
            ("Accept", "application/json"),
            ("User-Agent", "OpenAI/Python 3"),
            ("Idempotency-Key", "abc-123"),
            ("x-stainless-lang", "python"),
        ]
        assert forwarded(sent) == dict(sent)

    @pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
    def test_hop_by_hop_dropped(self, name: str) -> None:
        """Every hop-by-hop header of RFC 9110 §7.6.1 stops here, whatever its case."""
        out = forwarded([(name.upper(), "x"), ("Accept", "*/*")])
        assert lower_names(out) == {"accept"}

    def test_connection_named_headers_dropped(self) -> None:
        """Headers named in any Connection header (comma lists, odd case, spaces) are dropped."""
        out = forwarded(
            [
                ("Connection", "keep-alive, X-Secret-Hop ,x-other"),
                ("connection", "X-Third"),
                ("X-Secret-Hop", "1"),
                ("X-OTHER", "2"),
                ("x-third", "3"),
                ("X-Kept", "4"),
            ]
        )
        assert out == {"X-Kept": "4"}

    def test_connection_naming_an_end_to_end_header_drops_it(self) -> None:
        """A client can make us drop its own end-to-end header, never add one."""
        out = forwarded([("Connection", "Accept"), ("Accept", "*/*"), ("X-Kept", "1")])
        assert out == {"X-Kept": "1"}

    @pytest.mark.parametrize("name", sorted(INTERNAL))
    def test_internal_headers_dropped(self, name: str) -> None:
        """Headers that only we may set never ride along from a client."""
        assert forwarded([(name, "spoofed"), ("X-Kept", "1")]) == {"X-Kept": "1"}

    @pytest.mark.parametrize(
        "name", ["X-Layer-Router-Hops", "x-layer-router-anything", "X-LAYER-ROUTER-Tenant"]
    )
    def test_internal_prefix_dropped(self, name: str) -> None:
        """Anything under the X-Layer-Router- prefix is ours, in any case."""
        assert forwarded([(name, "spoofed"), ("X-Kept", "1")]) == {"X-Kept": "1"}

    @pytest.mark.parametrize("name", sorted(REISSUED))
    def test_reissued_headers_dropped(self, name: str) -> None:
        """Headers we set on every forwarded request are never doubled by the client's copy."""
        assert forwarded([(name, "client"), ("X-Kept", "1")]) == {"X-Kept": "1"}

    @pytest.mark.parametrize(
        "name", ["Host", "Content-Length", "Content-Encoding", "Expect", "Accept-Encoding"]
    )
    def test_framing_headers_dropped(self, name: str) -> None:
        """Framing is the transport's job on each hop: the client's values never go upstream."""
        assert forwarded([(name, "x"), ("X-Kept", "1")]) == {"X-Kept": "1"}

    def test_authorization_dropped_by_default(self) -> None:
        """The client's credentials are not the upstream's business unless the cluster says so."""
        assert forwarded([("Authorization", "Bearer client"), ("X-Kept", "1")]) == {"X-Kept": "1"}

    def test_authorization_forwarded_when_configured(self) -> None:
        """forward_authorization passes the client's Authorization through unchanged."""
        out = forwarded([("Authorization", "Bearer client")], auth=True)
        assert out == {"Authorization": "Bearer client"}

    @pytest.mark.parametrize("name", ["OpenAI-Organization", "openai-project", "Cookie"])
    def test_client_account_goes_only_with_its_credentials(self, name: str) -> None:
        """The account a client's OpenAI key bills, and the client's cookies (a session with
        an SSO proxy in front of the router), go upstream with its credentials only: not by
        default, nor beside the cluster's own key (OpenAI refuses a key another account
        names: 401 mismatched_organization)."""
        client = [("Authorization", "Bearer client"), (name, "org-client")]
        assert forwarded(client) == {}
        own = forwarded(client, auth=True, extra={"Authorization": "Bearer up"})
        assert own == {"Authorization": "Bearer up"}
        assert forwarded(client, auth=True) == dict(client)
        # The tenant's key for this router stays here; the client's upstream key goes on.
        tenant = upstream_request_headers(
            CIMultiDict([*client, ("api-key", "upstream")]),
            forward_authorization=True,
            extra={},
            key_header="authorization",
        )
        assert tenant == {name: "org-client", "api-key": "upstream"}

    def test_proxy_authorization_never_forwarded(self) -> None:
        """Proxy-Authorization is hop-by-hop even when Authorization is forwarded."""
        out = forwarded([("Proxy-Authorization", "Basic eA==")], auth=True)
        assert out == {}

    def test_cluster_headers_added(self) -> None:
        """The cluster's own headers (e.g. an API key) are added to every request."""
        out = forwarded([("Accept", "*/*")], extra={"X-Api-Key": "cluster-key"})
        assert out == {"Accept": "*/*", "X-Api-Key": "cluster-key"}

    @pytest.mark.parametrize("client_name", ["X-Api-Key", "x-api-key", "X-API-KEY"])
    def test_cluster_header_replaces_client_copy_in_any_case(self, client_name: str) -> None:
        """A client cannot add a second value to a header the cluster sets, whatever the case."""
        out = forwarded([(client_name, "client-key")], extra={"X-Api-Key": "cluster-key"})
        assert out == {"X-Api-Key": "cluster-key"}

    def test_cluster_authorization_wins_over_forwarded_one(self) -> None:
        """A cluster's own Authorization replaces the client's even when forwarding is on."""
        out = forwarded(
            [("authorization", "Bearer client")], auth=True, extra={"Authorization": "Bearer up"}
        )
        assert out == {"Authorization": "Bearer up"}

    def test_repeated_field_lines_are_joined(self) -> None:
        """A header sent on several lines reaches the upstream as one list, none lost."""
        out = forwarded([("X-Custom", "one"), ("x-custom", "two"), ("Accept", "*/*")])
        assert out == {"X-Custom": "one, two", "Accept": "*/*"}
        cookies = forwarded([("Cookie", "a=1"), ("Cookie", "b=2")], auth=True)
        assert cookies == {"Cookie": "a=1; b=2"}

    @pytest.mark.parametrize("name", ["Cookie", "cookie"])
    def test_cookies_stay_here_unless_credentials_go(self, name: str) -> None:
        """A client's cookies (a session with the site in front) are its credentials: they
        reach no upstream unless the cluster forwards the client's credentials."""
        sent = [(name, "session=sk-canary-9d1e; mail=c@example.com"), ("Accept", "*/*")]
        assert forwarded(sent) == {"Accept": "*/*"}
        assert forwarded(sent, auth=True) == dict(sent)

    def test_input_not_modified(self) -> None:
        """The client's headers are read, never changed."""
        client = CIMultiDict([("Connection", "X-Hop"), ("X-Hop", "1"), ("Accept", "*/*")])
        upstream_request_headers(client, forward_authorization=False, extra={"X-A": "b"})
        assert list(client.items()) == [("Connection", "X-Hop"), ("X-Hop", "1"), ("Accept", "*/*")]


class TestDownstreamResponseHeaders:
    """An upstream's response headers as our client may see them."""

    def test_end_to_end_headers_pass(self) -> None:
        """Caching and retry hints and the upstream's own headers reach the client."""
        sent = {"Cache-Control": "no-cache", "Retry-After": "3", "X-Upstream-Thing": "ok"}
        assert downstream_response_headers(CIMultiDict(sent)) == sent

    @pytest.mark.parametrize(
        "name",
        [
            *sorted(HOP_BY_HOP),
            *sorted(INTERNAL),
            "X-Layer-Router-Debug",
            "Server",
            "Date",
            "Content-Type",
            "Content-Length",
            "X-Request-Id",
            "Set-Cookie",
        ],
    )
    def test_ours_and_framing_dropped(self, name: str) -> None:
        """Framing, hop-by-hop and internal headers and cookies are never relayed as they came."""
        out = downstream_response_headers(CIMultiDict([(name, "x"), ("X-Kept", "1")]))
        assert out == {"X-Kept": "1"}

    def test_repeated_field_lines_are_joined(self) -> None:
        """An upstream's Vary (or any field) on several lines reaches the client whole."""
        upstream = CIMultiDict([("Vary", "Accept"), ("vary", "Origin"), ("X-Kept", "1")])
        assert downstream_response_headers(upstream) == {"Vary": "Accept, Origin", "X-Kept": "1"}

    def test_repeated_lines_become_one_list(self) -> None:
        """Cache-Control on two lines (either case) is one value, so `private` is never lost
        behind a later `max-age` (RFC 9110 §5.3)."""
        upstream = CIMultiDict(
            [("Cache-Control", "private"), ("cache-control", "max-age=600"), ("Vary", "A")]
        )
        out = downstream_response_headers(upstream)
        assert out == {"Cache-Control": "private, max-age=600", "Vary": "A"}

    def test_connection_named_dropped(self) -> None:
        """An upstream's Connection-named headers stop at us too."""
        upstream = CIMultiDict([("Connection", "X-Hop"), ("x-hop", "1"), ("X-Kept", "1")])
        assert downstream_response_headers(upstream) == {"X-Kept": "1"}


class TestHops:
    """The loop guard's hop count."""

    def test_absent_is_zero(self) -> None:
        """An ordinary client has passed no layer-router."""
        assert hops(CIMultiDict()) == 0

    @pytest.mark.parametrize("value", ["0", "1", "7", "8"])
    def test_decimal_read(self, value: str) -> None:
        """A small decimal count is read as it is."""
        assert hops(CIMultiDict({HOPS: value})) == int(value)

    def test_case_insensitive_name(self) -> None:
        """The header name matches in any case."""
        assert hops(CIMultiDict({HOPS.lower(): "3"})) == 3

    @pytest.mark.parametrize("value", ["", "-1", "1.5", "abc", "\u0663", "0x10", "1000", " 2"])
    def test_garbage_counts_as_a_loop(self, value: str) -> None:
        """Anything but a short decimal is treated as too many hops, never as zero."""
        assert hops(CIMultiDict({HOPS: value})) > MAX_HOPS


class TestRequestId:
    """X-Request-Id: the client's when it is well-formed, else a fresh one."""

    @pytest.mark.parametrize(
        "given", ["req-123", "A.b_c:d-e", "x" * 128, "0f8fad5b-d9cb-469f-a165-70867728950e"]
    )
    def test_well_formed_kept(self, given: str) -> None:
        """A well-formed id is propagated unchanged."""
        assert request_id(CIMultiDict({"x-request-id": given})) == given

    @pytest.mark.parametrize(
        "given", ["", "has space", "x" * 129, "semi;colon", "caf\u00e9", "a/b", "tab\there"]
    )
    def test_malformed_replaced(self, given: str) -> None:
        """A malformed id (could smuggle text into logs or headers) is replaced."""
        fresh = request_id(CIMultiDict({"X-Request-Id": given}))
        assert FRESH_ID.match(fresh)

    def test_absent_created(self) -> None:
        """Without one, each request gets its own fresh id."""
        first, second = request_id(CIMultiDict()), request_id(CIMultiDict())
        assert FRESH_ID.match(first)
        assert FRESH_ID.match(second)
        assert first != second


class TestTraceparent:
    """W3C traceparent: continue the caller's trace with a new span, or start one."""

    def test_continues_trace_with_new_span(self) -> None:
        """Same trace id, a different span id, sampled."""
        given = f"00-{TRACE_ID}-{SPAN_ID}-01"
        out = traceparent(CIMultiDict({"traceparent": given}))
        assert TRACEPARENT.match(out)
        _, trace_id, span_id, _ = out.split("-")
        assert trace_id == TRACE_ID
        assert span_id != SPAN_ID

    def test_caller_sampling_decision_kept(self) -> None:
        """A caller's not-sampled flag (00) stays 00 upstream: a router that does not record
        the trace must not turn sampling on for everything behind it (W3C §3.2.2.5)."""
        out = traceparent(CIMultiDict({"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00"}))
        assert out.startswith(f"00-{TRACE_ID}-")
        assert out.endswith("-00")

    def test_surrounding_whitespace_tolerated(self) -> None:
        """Optional whitespace around the value does not break the trace."""
        out = traceparent(CIMultiDict({"Traceparent": f"  00-{TRACE_ID}-{SPAN_ID}-00 "}))
        assert out.split("-")[1] == TRACE_ID

    @pytest.mark.parametrize(
        "given",
        [
            f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id is invalid
            f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id is invalid
            f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",  # upper-case hex is invalid
            f"ff-{TRACE_ID}-{SPAN_ID}-01",  # version ff is forbidden
            f"00-{TRACE_ID}-{SPAN_ID}-01-what",  # version 00 has exactly four fields
            f"01-{TRACE_ID}-{SPAN_ID}-01what",  # a later version's fields end at a dash
            f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",
            f"00-{TRACE_ID}-{SPAN_ID}",
            "garbage",
            "",
        ],
    )
    def test_invalid_starts_new_trace(self, given: str) -> None:
        """An invalid traceparent is ignored: a new, valid trace begins (W3C §3.2.2)."""
        out = traceparent(CIMultiDict({"traceparent": given}))
        assert TRACEPARENT.match(out)
        assert out.split("-")[1] not in (TRACE_ID, "0" * 32)

    @pytest.mark.parametrize(
        "given", [f"01-{TRACE_ID}-{SPAN_ID}-01", f"cc-{TRACE_ID}-{SPAN_ID}-01-x"]
    )
    def test_later_version_continued(self, given: str) -> None:
        """A version we do not know is read by its version-00 fields and continued as 00,
        extra fields and all (W3C §3.2.4 forward compatibility)."""
        out = traceparent(CIMultiDict({"traceparent": given}))
        assert out.startswith(f"00-{TRACE_ID}-")
        assert out.endswith("-01")

    def test_absent_starts_new_trace(self) -> None:
        """Without one, each request starts its own trace."""
        first, second = traceparent(CIMultiDict()), traceparent(CIMultiDict())
        assert TRACEPARENT.match(first)
        assert first.split("-")[1] != second.split("-")[1]


@pytest.mark.parametrize(
    ("client_authorization", "kept"), [(None, False), ("Bearer client-key", True)]
)
def test_account_headers_never_beside_a_url_credential(
    client_authorization: str | None, kept: bool
) -> None:
    """A cluster forwarding the client's credentials whose endpoint URL holds the router's
    own (user:password, sent as Basic when the client sends no Authorization): the client's
    Cookie and OpenAI-Organization went beside the router's key; they go only beside the
    client's own Authorization."""
    from router.context import RequestContext
    from router.forwarding import outgoing
    from router.policy.bundle import load_bundle
    from router.privacy import Privacy
    from router.resources import default_policy_bundle
    from router.settings import ClusterSettings
    from router.upstreams.cluster import Cluster

    cluster = Cluster.from_settings(
        ClusterSettings.model_validate(
            {
                "name": "c",
                "tier": "central",
                "endpoints": [{"url": "http://router:secret-pass@127.0.0.1:9"}],
                "forward_authorization": True,
            }
        )
    )
    privacy = Privacy.build(load_bundle(default_policy_bundle()), None, b"s" * 32)
    client = CIMultiDict({"Cookie": "sso=s1", "OpenAI-Organization": "org-client"})
    if client_authorization is not None:
        client["Authorization"] = client_authorization
    ctx = RequestContext(
        api="openai", model="m", version=None, deadline=0.0, headers=client, body=b"{}"
    )
    sent = CIMultiDict(outgoing(ctx, cluster, privacy).headers)
    assert ("Cookie" in sent) is kept
    assert ("OpenAI-Organization" in sent) is kept
