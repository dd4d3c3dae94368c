"""An upstream's 401/403 to the router's own credential for it (a key in the cluster's
`headers`) is the router's failure: the next target is tried, and when none answers the client
gets 502 upstream_auth_failed naming the cluster, never the key; the operator sees it once per
outage in the log, and in /metrics and /status. A client credential passed through
(`forward_authorization`) is refused verbatim, as before. Real fake upstreams that check the
Authorization header, the real router app, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from router.api.admin import build_admin_app
from router.api.state import UPSTREAMS
from router.testing import Behaviour, FakeUpstream, router_in_front_of, serving
from router.upstreams.cluster import Cluster

MODEL = "gpt-test"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
RIGHT = "Bearer right-key-for-the-upstream"
WRONG_CANARY = "Bearer CANARY-stale-router-key-0451"
CLIENT_CANARY = "Bearer CANARY-client-key-7734"
AUTH_LOG = "router.upstreams.cluster"


async def start_fake(stack: contextlib.AsyncExitStack, name: str) -> tuple[FakeUpstream, str]:
    fake = FakeUpstream(name=name, models=(MODEL,), behaviour=Behaviour(authorization=RIGHT))
    return fake, await stack.enter_async_context(serving(fake.app()))


def cluster(name: str, tier: str, url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "name": name,
        "tier": tier,
        "protocols": ["openai"],
        "models": [MODEL],
        "endpoints": [{"url": url}],
        "connect_timeout_ms": 500,
        "request_timeout_ms": 3000,
        "health_check": {"enabled": False},
        "retry": {"base_backoff_ms": 1, "max_backoff_ms": 5},
        **overrides,
    }


def cluster_of(app: web.Application, name: str) -> Cluster:
    return app[UPSTREAMS].clusters[name]


async def chat(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    async with asyncio.timeout(10):
        async with http.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers) as r:
            return r.status, r.headers, await r.read()


class TestRouterCredentialRefused:
    async def test_refused_key_falls_back_to_the_next_tier(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """Regional refusing the router's key hands over to central at once (no retry, no
        ejection): the client gets central's answer, never regional's 401."""
        regional, regional_url = await start_fake(stack, "regional")
        central, central_url = await start_fake(stack, "central")
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", regional_url, headers={"Authorization": WRONG_CANARY}),
            cluster("central", "central", central_url, headers={"Authorization": RIGHT}),
        )
        status, headers, body = await chat(http, url, {"Authorization": CLIENT_CANARY})
        assert status == 200, body
        assert headers["X-Served-By-Tier"] == "central"
        assert headers["X-Route-Reason"] == "failed:regional:upstream_auth_failed,fallback:central"
        assert len(regional.received) == 1  # not retried: every endpoint gets the same key
        assert regional.received[0].headers["Authorization"] == WRONG_CANARY
        assert central.received[0].headers["Authorization"] == RIGHT
        regional_cluster = cluster_of(app, "regional")
        now = asyncio.get_running_loop().time()
        assert all(ep.health.live(now) for ep in regional_cluster.endpoints)
        assert regional_cluster.counters.failures == 0  # never an outlier for a bad key

    async def test_no_target_left_is_a_502_naming_the_cluster(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """With no other target the client gets 502 upstream_auth_failed naming the cluster
        (no key, its or ours); the operator gets one log line per outage, a metric and a
        /status flag, and the next accepted answer ends the outage."""
        regional, regional_url = await start_fake(stack, "regional")
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", regional_url, headers={"Authorization": WRONG_CANARY}),
        )
        with caplog.at_level(logging.INFO, logger=AUTH_LOG):
            answers = [await chat(http, url, {"Authorization": CLIENT_CANARY}) for _ in range(3)]
            for status, headers, body in answers:
                assert status == 502
                error = orjson.loads(body)["error"]
                assert error["code"] == "upstream_auth_failed"
                assert "regional" in error["message"]
                assert b"CANARY" not in body
                assert "CANARY" not in str(headers)
                assert headers.get("x-should-retry") == "false"
            regional_cluster = cluster_of(app, "regional")
            assert regional_cluster.auth_failing
            assert regional_cluster.counters.auth_failures == 3
            refusals = [r for r in caplog.records if r.name == AUTH_LOG]
            assert len(refusals) == 1
            assert refusals[0].levelno == logging.ERROR
            assert "regional" in refusals[0].getMessage()
            assert "CANARY" not in caplog.text
            regional.behaviour.authorization = WRONG_CANARY  # the operator fixed the key
            status, _, body = await chat(http, url)
            assert status == 200, body
            assert not regional_cluster.auth_failing
            assert len([r for r in caplog.records if r.name == AUTH_LOG]) == 2
            regional.behaviour.authorization = RIGHT  # and rotated it upstream only: again
            assert (await chat(http, url))[0] == 502
            assert regional_cluster.auth_failing
            assert len([r for r in caplog.records if r.name == AUTH_LOG]) == 3
        admin = await stack.enter_async_context(serving(build_admin_app(app)))
        async with asyncio.timeout(10):
            async with http.get(f"{admin}/metrics") as response:
                metrics = await response.text()
            async with http.get(f"{admin}/status") as response:
                upstreams = (await response.json())["upstreams"]
        assert 'upstream_auth_failures_total{cluster="regional",tier="regional"} 4.0' in metrics
        assert [u["auth_failing"] for u in upstreams] == [True]

    async def test_a_stream_request_is_refused_the_same_way(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """A stream request refused before its first byte is the same 502, not a 401."""
        _, regional_url = await start_fake(stack, "regional")
        _, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", regional_url, headers={"api-key": WRONG_CANARY}),
        )
        async with asyncio.timeout(10):
            async with http.post(
                f"{url}/v1/chat/completions", json={**CHAT, "stream": True}
            ) as response:
                body = await response.read()
        assert response.status == 502
        assert orjson.loads(body)["error"]["code"] == "upstream_auth_failed"

    async def test_a_refusal_whose_body_never_ends_is_still_the_keys_refusal(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """A 403 whose body stalls (a tarpitting gateway) is read for its error code only
        briefly: the router's refused key, central answers, the cool-off starts; not a timeout
        that the client's whole try waits for."""

        async def tarpit(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(status=403, headers={"Content-Type": "application/json"})
            response.content_length = 64
            await response.prepare(request)
            await response.write(b'{"error": {"code": "forb')
            await asyncio.sleep(30)
            return response

        stalled = web.Application()
        stalled.router.add_post("/v1/chat/completions", tarpit)
        stalled_url = await stack.enter_async_context(serving(stalled))
        _, central_url = await start_fake(stack, "central")
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster(
                "regional",
                "regional",
                stalled_url,
                headers={"Authorization": WRONG_CANARY},
                request_timeout_ms=8000,
                retry={"max_attempts": 1},
            ),
            cluster("central", "central", central_url, headers={"Authorization": RIGHT}),
        )
        status, headers, body = await chat(http, url)
        assert status == 200, body
        assert headers["X-Route-Reason"] == "failed:regional:upstream_auth_failed,fallback:central"
        assert cluster_of(app, "regional").auth_failing


async def admin_views(
    stack: contextlib.AsyncExitStack, app: web.Application, http: aiohttp.ClientSession
) -> tuple[str, list[dict[str, Any]]]:
    """/metrics as text, and /status's upstreams."""
    admin = await stack.enter_async_context(serving(build_admin_app(app)))
    async with asyncio.timeout(10):
        async with http.get(f"{admin}/metrics") as response:
            metrics = await response.text()
        async with http.get(f"{admin}/status") as response:
            upstreams: list[dict[str, Any]] = (await response.json())["upstreams"]
    return metrics, upstreams


class TestCoolOff:
    async def test_a_refusing_cluster_is_tried_last_until_its_cooloff_ends(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """After regional refuses the router's key, the requests during its cool-off go to
        central first (regional gets none, each answer is not delayed by its refusal), /status
        shows the cool-off; past it one request tries regional first again and, the key fixed
        upstream meanwhile, regional serves as before. One log line per outage, no key."""
        regional, regional_url = await start_fake(stack, "regional")
        central, central_url = await start_fake(stack, "central")
        cooloff = {"outlier": {"auth_cooloff_s": 1.5}}
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster(
                "regional",
                "regional",
                regional_url,
                headers={"Authorization": WRONG_CANARY},
                **cooloff,
            ),
            cluster("central", "central", central_url, headers={"Authorization": RIGHT}),
        )
        regional_cluster = cluster_of(app, "regional")
        with caplog.at_level(logging.INFO):
            status, headers, body = await chat(http, url, {"Authorization": CLIENT_CANARY})
            assert status == 200, body
            assert headers["X-Route-Reason"] == (
                "failed:regional:upstream_auth_failed,fallback:central"
            )
            for _ in range(3):
                status, headers, body = await chat(http, url, {"Authorization": CLIENT_CANARY})
                assert status == 200, body
                assert headers["X-Served-By-Tier"] == "central"
                assert headers["X-Route-Reason"] == "auth_cooloff:regional,forward:central"
            assert len(regional.received) == 1  # the refusal, and nothing during the cool-off
            assert len(central.received) == 4
            metrics, upstreams = await admin_views(stack, app, http)
            (regional_status,) = [u for u in upstreams if u["cluster"] == "regional"]
            assert regional_status["auth_failing"]
            assert 0 < regional_status["auth_cooloff_s"] <= 1.5
            assert all(ep["live"] for ep in regional_status["endpoints"])  # not ejected
            assert 'upstream_auth_failures_total{cluster="regional",tier="regional"} 1.0' in (
                metrics
            )
            regional.behaviour.authorization = WRONG_CANARY  # the key rotated upstream
            loop = asyncio.get_running_loop()
            for _ in range(100):
                if not regional_cluster.auth_cooling_off(loop.time()):
                    break
                await asyncio.sleep(0.05)
            status, headers, body = await chat(http, url, {"Authorization": CLIENT_CANARY})
            assert status == 200, body
            assert headers["X-Served-By-Tier"] == "regional"
            assert headers["X-Route-Reason"] == "forward:regional"
            assert not regional_cluster.auth_failing
            metrics, upstreams = await admin_views(stack, app, http)
        refusals = [r for r in caplog.records if r.name == AUTH_LOG and r.levelno >= logging.ERROR]
        assert len(refusals) == 1
        assert "CANARY" not in caplog.text
        assert "CANARY" not in metrics
        assert "CANARY" not in str(upstreams)
        assert [u["auth_cooloff_s"] for u in upstreams] == [0, 0]

    async def test_a_clients_refused_key_takes_no_tier_away(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """Where the client's key goes upstream, its 401 is the client's alone: the next
        client with a good key is served by the nearest tier first, nothing cools off."""
        good = "Bearer a-good-client-key"
        regional = FakeUpstream(
            name="regional", models=(MODEL,), behaviour=Behaviour(authorization=good)
        )
        regional_url = await stack.enter_async_context(serving(regional.app()))
        _, central_url = await start_fake(stack, "central")
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", regional_url, forward_authorization=True),
            cluster("central", "central", central_url, forward_authorization=True),
        )
        status, _, body = await chat(http, url, {"Authorization": CLIENT_CANARY})
        assert status == 401, body
        status, headers, body = await chat(http, url, {"Authorization": good})
        assert status == 200, body
        assert headers["X-Route-Reason"] == "forward:regional"
        loop = asyncio.get_running_loop()
        assert not cluster_of(app, "regional").auth_cooling_off(loop.time())
        _, upstreams = await admin_views(stack, app, http)
        assert [u["auth_cooloff_s"] for u in upstreams] == [0, 0]
        assert "CANARY" not in str(upstreams)


class TestCredentialsInTheUrl:
    @pytest.mark.parametrize("client", ["h1", "aiohttp"])
    async def test_a_url_credential_is_sent_and_is_the_routers_own(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        client: str,
    ) -> None:
        """An endpoint URL's user:password goes upstream as Basic credentials with either
        client, and is the router's own: its refusal is 502 upstream_auth_failed, never the
        upstream's 401 relayed as if the client's key were wrong."""
        basic = "Basic " + base64.b64encode(b"router:CANARY-url-pw").decode()
        behaviour = Behaviour(authorization=basic)
        fake = FakeUpstream(name="regional", models=(MODEL,), behaviour=behaviour)
        fake_url = await stack.enter_async_context(serving(fake.app()))
        with_password = fake_url.replace("http://", "http://router:CANARY-url-pw@")
        _, url = await router_in_front_of(
            stack, tmp_path, cluster("regional", "regional", with_password, client=client)
        )
        status, _, body = await chat(http, url, {"Authorization": CLIENT_CANARY})
        assert status == 200, body
        assert fake.received[-1].headers["Authorization"] == basic
        fake.behaviour.authorization = "Basic rotated"
        status, _, body = await chat(http, url, {"Authorization": CLIENT_CANARY})
        assert status == 502, body
        assert orjson.loads(body)["error"]["code"] == "upstream_auth_failed"
        assert b"CANARY" not in body

    @pytest.mark.parametrize("client", ["h1", "aiohttp"])
    async def test_a_forwarded_client_key_wins_over_a_url_credential(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        client: str,
    ) -> None:
        """With forward_authorization, a client's own Authorization goes upstream in place of
        the URL's user:password, with either client (aiohttp refuses to send both: a 500)."""
        fake = FakeUpstream(
            name="regional", models=(MODEL,), behaviour=Behaviour(authorization=CLIENT_CANARY)
        )
        fake_url = await stack.enter_async_context(serving(fake.app()))
        with_password = fake_url.replace("http://", "http://router:url-pw@")
        _, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster(
                "regional", "regional", with_password, client=client, forward_authorization=True
            ),
        )
        status, _, body = await chat(http, url, {"Authorization": CLIENT_CANARY})
        assert status == 200, body
        assert fake.received[-1].headers["Authorization"] == CLIENT_CANARY


class TestHealthChecksRefused:
    async def test_a_refused_health_check_is_told_to_the_operator(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Health checks refused for the router's key (the endpoint checked down, so no
        request reaches it) are logged once as a refused credential, not only an unhealthy
        endpoint; once the key works the checks pass and a request ends the outage."""
        regional, regional_url = await start_fake(stack, "regional")
        checks = {"enabled": True, "interval_s": 0.02, "timeout_s": 0.5}
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster(
                "regional",
                "regional",
                regional_url,
                headers={"Authorization": WRONG_CANARY},
                health_check={**checks, "path": "/v1/models", "unhealthy_threshold": 1},
            ),
        )
        regional_cluster = cluster_of(app, "regional")
        with caplog.at_level(logging.INFO, logger=AUTH_LOG):
            for _ in range(250):
                if regional_cluster.counters.auth_failures >= 3:
                    break
                await asyncio.sleep(0.02)
            assert regional_cluster.auth_failing
            refusals = [r for r in caplog.records if r.name == AUTH_LOG]
            assert len(refusals) == 1
            assert "health check" in refusals[0].getMessage()
            regional.behaviour.authorization = WRONG_CANARY  # the operator fixed the key
            for _ in range(250):
                status, _, _ = await chat(http, url)
                if status == 200:
                    break
                await asyncio.sleep(0.02)
            assert status == 200
            assert not regional_cluster.auth_failing

    async def test_a_refused_model_list_is_told_to_the_operator(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A cluster whose models are discovered, its model list refused for the router's
        key: it serves nothing (no request ever reaches it), so the refusal itself is logged
        once as a refused credential and shown in auth_failing, never the key."""
        _, regional_url = await start_fake(stack, "regional")
        with caplog.at_level(logging.INFO, logger=AUTH_LOG):
            app, _ = await router_in_front_of(
                stack,
                tmp_path,
                cluster(
                    "regional",
                    "regional",
                    regional_url,
                    models=[],
                    headers={"Authorization": WRONG_CANARY},
                ),
            )
            regional_cluster = cluster_of(app, "regional")
            for _ in range(250):
                if regional_cluster.auth_failing:
                    break
                await asyncio.sleep(0.02)
            assert regional_cluster.auth_failing
            assert regional_cluster.models is None
            refusals = [r.getMessage() for r in caplog.records if r.name == AUTH_LOG]
            assert len(refusals) == 1
            assert "model list" in refusals[0]
            assert "CANARY" not in refusals[0]


class TestClientCredentialPassedThrough:
    async def test_the_clients_refused_key_is_relayed_verbatim(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """A cluster that forwards the client's credentials relays the upstream's 401: it is
        the client's key that was refused."""
        regional, regional_url = await start_fake(stack, "regional")
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", regional_url, forward_authorization=True),
        )
        status, _, body = await chat(http, url, {"Authorization": CLIENT_CANARY})
        assert status == 401
        assert orjson.loads(body)["error"]["code"] == "invalid_api_key"
        assert regional.received[0].headers["Authorization"] == CLIENT_CANARY
        assert not cluster_of(app, "regional").auth_failing
        assert cluster_of(app, "regional").counters.auth_failures == 0


class TestRouterCredentialQuoted:
    @pytest.mark.parametrize("status", [400, 422])
    async def test_an_error_quoting_the_routers_key_is_relayed_without_it(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        status: int,
    ) -> None:
        """An upstream error that quotes the request it refused, the router's own key and URL
        password among its headers, reaches the client without them (any client able to
        provoke that error would have the router's credentials); the rest as it came."""
        key = "sk-router-own-CANARY-5e0d1c"
        pair = base64.b64encode(b"router:CANARY-url-pw-77").decode()
        quoted = (
            f'{{"error": {{"message": "bad header Authorization: Bearer {key}; also {key}; '
            f'endpoint Basic {pair} (CANARY-url-pw-77)", "code": "bad"}}}}'
        ).encode()
        behaviour = Behaviour(fail_status=status, fail_body=quoted)
        fake = FakeUpstream(name="regional", models=(MODEL,), behaviour=behaviour)
        fake_url = await stack.enter_async_context(serving(fake.app()))
        with_password = fake_url.replace("http://", "http://router:CANARY-url-pw-77@")
        headers = {"X-Api-Key": key}  # with the URL's Basic pair in Authorization
        retry = {"max_attempts": 1}
        regional = cluster("regional", "regional", with_password, headers=headers, retry=retry)
        _, url = await router_in_front_of(stack, tmp_path, regional)
        got, _, body = await chat(http, url)
        assert fake.received[-1].headers["X-Api-Key"] == key
        assert b"CANARY" not in body
        assert got == status  # relayed: the upstream's own words, the key left out
        assert orjson.loads(body)["error"]["message"] == (
            "bad header Authorization: Bearer [redacted]; also [redacted]; "
            "endpoint Basic [redacted] ([redacted])"
        )
