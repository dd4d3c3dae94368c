"""Capability discovery: what each cluster serves is learnt from its model lists, and asked
again at once when the cluster turns out not to serve what its list promised."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler

from router.api.state import UPSTREAMS
from router.app import build_app
from router.settings import Settings
from router.testing import FakeUpstream, identity_model, settings_for, write_repository
from router.upstreams.prober import EARLY_DISCOVERY_GAP_S


@contextlib.asynccontextmanager
async def regional_in_front_of(
    upstream_app: web.Application,
) -> AsyncIterator[tuple[web.Application, TestServer]]:
    """A router whose one regional OpenAI cluster, without health checks and discovered only
    when asked (hourly otherwise), points at `upstream_app`: the router's app and server."""
    upstream = TestServer(upstream_app, host="127.0.0.1")
    await upstream.start_server()
    settings = Settings.model_validate(
        {
            "cache": {"enabled": False},
            "upstreams": [
                {
                    "name": "regional",
                    "tier": "regional",
                    "protocols": ["openai"],
                    "endpoints": [{"url": str(upstream.make_url("")).rstrip("/")}],
                    "discovery_interval_s": 3600,
                    "health_check": {"enabled": False},
                }
            ],
        }
    )
    app = build_app(settings)
    router = TestServer(app, host="127.0.0.1")
    await router.start_server()
    try:
        yield app, router
    finally:
        await router.close()
        await upstream.close()


class TestDiscovery:
    async def test_a_404_from_upstream_triggers_rediscovery(self) -> None:
        """The upstream drops gpt-a for gpt-b: one 404 later the router knows gpt-b."""
        fake = FakeUpstream(name="regional", models=["gpt-a"])
        async with regional_in_front_of(fake.app()) as (app, router):
            cluster = app[UPSTREAMS].clusters["regional"]
            assert cluster.models == frozenset({"gpt-a"})
            fake.models = ["gpt-b"]
            fake.behaviour.fail_status, fake.behaviour.fail_times = 404, 1
            chat = {"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]}
            async with aiohttp.ClientSession() as http, asyncio.timeout(10):
                async with http.post(router.make_url("/v1/chat/completions"), json=chat) as r:
                    assert r.status == 404
                deadline = time.monotonic() + 5
                while cluster.models != frozenset({"gpt-b"}):
                    assert time.monotonic() < deadline, cluster.models
                    await asyncio.sleep(0.05)

    async def test_a_burst_of_404s_asks_for_the_model_list_at_most_once_a_second(
        self,
    ) -> None:
        """Each 404 asks for an early discovery round; a client provoking 404s back to back
        must not make the router poll the cluster's model list back to back."""
        fake = FakeUpstream(name="regional", models=["gpt-a"])
        lists: list[float] = []

        @web.middleware
        async def count_lists(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path == "/v1/models":
                lists.append(time.monotonic())
            response: web.StreamResponse = await handler(request)
            return response

        upstream_app = fake.app()
        upstream_app.middlewares.append(count_lists)
        async with regional_in_front_of(upstream_app) as (_, router):
            fake.behaviour.fail_status = 404  # a plain 404 (a path it lacks), every time
            chat = {"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]}
            started = time.monotonic()
            async with aiohttp.ClientSession() as http, asyncio.timeout(20):
                for _ in range(30):
                    async with http.post(router.make_url("/v1/chat/completions"), json=chat) as r:
                        assert r.status == 404
                    await asyncio.sleep(0.01)
            elapsed = time.monotonic() - started
            during = [t for t in lists if t >= started]
            assert len(during) <= elapsed / EARLY_DISCOVERY_GAP_S + 2, (len(during), elapsed)

    async def test_probes_carry_the_clusters_headers(self) -> None:
        """An upstream that wants the cluster's API key on every request (OpenAI, vLLM with
        --api-key): discovery learns its models and health checks keep it live, because
        both send the cluster's configured headers as requests do."""
        fake = FakeUpstream(name="keyed", models=["gpt-keyed"])
        seen: list[str | None] = []

        @web.middleware
        async def needs_key(request: web.Request, handler: Handler) -> web.StreamResponse:
            seen.append(request.headers.get("Authorization"))
            if request.headers.get("Authorization") != "Bearer sk-upstream":
                return web.json_response({"error": {"message": "no key"}}, status=401)
            return await handler(request)

        keyed = fake.app()
        keyed.middlewares.append(needs_key)
        upstream = TestServer(keyed, host="127.0.0.1")
        await upstream.start_server()
        settings = Settings.model_validate(
            {
                "cache": {"enabled": False},
                "upstreams": [
                    {
                        "name": "keyed",
                        "tier": "central",
                        "protocols": ["openai"],
                        "endpoints": [{"url": str(upstream.make_url("")).rstrip("/")}],
                        "headers": {"Authorization": "Bearer sk-upstream"},
                        "health_check": {"interval_s": 0.05, "unhealthy_threshold": 2},
                    }
                ],
            }
        )
        app = build_app(settings)
        router = TestServer(app, host="127.0.0.1")
        await router.start_server()
        try:
            cluster = app[UPSTREAMS].clusters["keyed"]
            assert cluster.models == frozenset({"gpt-keyed"})
            await asyncio.sleep(0.3)  # several health-check rounds
            assert len(cluster.live(asyncio.get_running_loop().time())) == 1
            chat = {"model": "gpt-keyed", "messages": [{"role": "user", "content": "hi"}]}
            async with (
                aiohttp.ClientSession() as http,
                asyncio.timeout(10),
                http.post(router.make_url("/v1/chat/completions"), json=chat) as r,
            ):
                assert r.status == 200
            assert set(seen) == {"Bearer sk-upstream"}
        finally:
            await router.close()
            await upstream.close()


@contextlib.asynccontextmanager
async def central_in_front_of(
    upstream_app: web.Application,
) -> AsyncIterator[tuple[web.Application, TestServer]]:
    """A router whose one central cluster (both protocols, default health checks every 50 ms)
    points at `upstream_app`, served on loopback: the router's app and server."""
    upstream = TestServer(upstream_app, host="127.0.0.1")
    await upstream.start_server()
    settings = Settings.model_validate(
        {
            "cache": {"enabled": False},
            "upstreams": [
                {
                    "name": "central",
                    "tier": "central",
                    "endpoints": [{"url": str(upstream.make_url("")).rstrip("/")}],
                    "health_check": {"interval_s": 0.05, "unhealthy_threshold": 2},
                }
            ],
        }
    )
    app = build_app(settings)
    router = TestServer(app, host="127.0.0.1")
    await router.start_server()
    try:
        yield app, router
    finally:
        await router.close()
        await upstream.close()


class TestDefaultHealthCheck:
    async def test_openai_only_upstream_is_healthy(self) -> None:
        """A cluster as `serve --central URL` makes it (both protocols, default checks) in
        front of an OpenAI-only server (vLLM, llama.cpp: no /v2/health/ready) is live: a
        404 there means 'not a KServe server', and /v1/models answers for it."""
        asked: list[str] = []

        async def models(request: web.Request) -> web.Response:
            asked.append(request.path)
            return web.json_response({"object": "list", "data": [{"id": "gpt-only"}]})

        async def chat(request: web.Request) -> web.Response:
            return web.json_response({"object": "chat.completion", "choices": []})

        openai_only = web.Application()
        openai_only.router.add_get("/v1/models", models)
        openai_only.router.add_post("/v1/chat/completions", chat)
        async with central_in_front_of(openai_only) as (app, router):
            cluster = app[UPSTREAMS].clusters["central"]
            await asyncio.sleep(0.4)  # several health-check rounds
            assert len(cluster.live(asyncio.get_running_loop().time())) == 1
            chat_body = {"model": "gpt-only", "messages": [{"role": "user", "content": "hi"}]}
            async with (
                aiohttp.ClientSession() as http,
                asyncio.timeout(10),
                http.post(router.make_url("/v1/chat/completions"), json=chat_body) as r,
            ):
                assert r.status == 200

    async def test_kserve_server_not_ready_is_down(self) -> None:
        """A KServe server whose /v2/health/ready says 503 is down, whatever else answers."""
        fake = FakeUpstream(name="triton", models=["gpt-x"], v2_models=["m"])
        fake.behaviour.healthy = False
        async with central_in_front_of(fake.app()) as (app, _):
            cluster = app[UPSTREAMS].clusters["central"]
            await asyncio.sleep(0.4)
            assert cluster.live(asyncio.get_running_loop().time()) == []

    async def test_chained_router_with_a_broken_model_stays_a_route(self, tmp_path: Path) -> None:
        """A layer-router upstream whose one model failed to load answers /v2/health/ready
        503 (strict, as Triton, for a Kubernetes probe) saying that models are the cause: the
        router in front keeps it live for the model that loaded (its lists leave the broken
        one out), instead of losing every route there to one broken file."""
        repo = write_repository(
            tmp_path, {"good": {1: identity_model("FP32")}, "broken": {1: b"not onnx"}}
        )
        upstream = build_app(settings_for(repo, inference_threads=1))
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [2]}]}
        async with (
            central_in_front_of(upstream) as (app, router),
            aiohttp.ClientSession() as http,
            asyncio.timeout(10),
        ):
            cluster = app[UPSTREAMS].clusters["central"]
            deadline = time.monotonic() + 5
            while cluster.models is None:
                assert time.monotonic() < deadline, "no model list in 5 s"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.4)  # several health-check rounds
            assert len(cluster.live(asyncio.get_running_loop().time())) == 1
            async with http.post(router.make_url("/v2/models/good/infer"), json=body) as r:
                assert r.status == 200
                assert (await r.json())["outputs"][0]["data"] == [2.0]
            # Neither of its lists names the broken model (its /v1/models did, so requests
            # for it went there, each answered 503 after retries waiting out Retry-After).
            assert "broken" not in cluster.models
            async with http.post(router.make_url("/v2/models/broken/infer"), json=body) as r:
                assert r.status == 404


_OPENAI_MISSING = (
    b'{"error": {"message": "The model `gpt-a` does not exist", "type": '
    b'"invalid_request_error", "param": null, "code": "model_not_found"}}'
)
# vLLM before 0.10 (and TensorRT-LLM's trtllm-serve): the error object is the whole body.
_VLLM_MISSING = (
    b'{"object": "error", "message": "The model `gpt-a` does not exist.", '
    b'"type": "NotFoundError", "param": null, "code": 404}'
)
# Ollama's OpenAI-compatible 404 for a model it has not pulled.
_OLLAMA_MISSING = (
    b'{"error": {"message": "model \\"gpt-a\\" not found, try pulling it first", '
    b'"type": "not_found_error", "param": null, "code": null}}'
)
_TRITON_MISSING = b'{"error": "Request for unknown model: \'m\' is not found"}'


@contextlib.asynccontextmanager
async def regional_and_central(
    regional: FakeUpstream, central: FakeUpstream, **overrides: object
) -> AsyncIterator[tuple[web.Application, TestServer, list[str]]]:
    """A router with a regional and a central cluster (no periodic rediscovery, no health
    checks, any other settings `overrides` for both): its app, its server, and the discovery
    requests the regional one received."""
    listings: list[str] = []

    @web.middleware
    async def count_listings(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/v1/models", "/v2/repository/index"):
            listings.append(request.path)
        return await handler(request)

    regional_app = regional.app()
    regional_app.middlewares.append(count_listings)
    servers = [TestServer(app, host="127.0.0.1") for app in (regional_app, central.app())]
    for server in servers:
        await server.start_server()
    clusters = [
        {
            "name": name,
            "tier": name,
            "endpoints": [{"url": str(server.make_url("")).rstrip("/")}],
            "discovery_interval_s": 3600,
            "health_check": {"enabled": False},
            **overrides,
        }
        for name, server in zip(("regional", "central"), servers, strict=True)
    ]
    app = build_app(Settings.model_validate({"cache": {"enabled": False}, "upstreams": clusters}))
    router = TestServer(app, host="127.0.0.1")
    await router.start_server()
    try:
        yield app, router, listings
    finally:
        await router.close()
        for server in servers:
            await server.close()


class TestStaleDiscovery:
    async def _walk(
        self, path: str, body: dict[str, object], regional: FakeUpstream, missing: bytes
    ) -> None:
        central = FakeUpstream(name="central", models=regional.models, v2_models=regional.v2_models)
        regional.behaviour.fail_status, regional.behaviour.fail_body = 404, missing
        async with regional_and_central(regional, central) as (app, router, listings):
            cluster = app[UPSTREAMS].clusters["regional"]
            model = str(body.get("model") or path.split("/")[3])
            assert model in (cluster.models or ())
            listed_at_start = len(listings)
            async with aiohttp.ClientSession() as http, asyncio.timeout(10):
                async with http.post(router.make_url(path), json=body) as r:
                    assert r.status == 200, await r.text()
                    reasons = r.headers["X-Route-Reason"]
                    assert r.headers["X-Served-By-Tier"] == "central"
                    await r.read()
                assert "failed:regional:model_not_found" in reasons
                assert "fallback:central" in reasons
                assert len(regional.received) == 1
                deadline = time.monotonic() + 5
                while len(listings) == listed_at_start:  # the regional list is asked again
                    assert time.monotonic() < deadline, "no rediscovery"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.1)  # that round (which lists the model still) is done
                async with http.post(router.make_url(path), json=body) as r:
                    assert r.status == 200
                    assert r.headers["X-Route-Reason"].startswith("forward:central")
                    await r.read()
            assert len(regional.received) == 1  # the second request went to central first
            assert model not in (cluster.models or ())

    async def test_openai_model_not_found_falls_back(self) -> None:
        """A regional upstream whose /v1/models lists gpt-a but whose chat answers 404
        model_not_found: central answers, and the next request goes to central first."""
        chat = {"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]}
        regional = FakeUpstream(name="regional", models=["gpt-a"])
        await self._walk("/v1/chat/completions", chat, regional, _OPENAI_MISSING)

    async def test_vllm_model_not_found_falls_back(self) -> None:
        """The same for a vLLM upstream whose 404 is its top-level error object
        (`"object": "error"`, type NotFoundError): it was relayed to the client instead."""
        chat = {"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]}
        regional = FakeUpstream(name="regional", models=["gpt-a"])
        await self._walk("/v1/chat/completions", chat, regional, _VLLM_MISSING)

    async def test_ollama_model_not_found_falls_back(self) -> None:
        """The same for an Ollama upstream (type not_found_error, `model "x" not found`),
        whose 404 was relayed to the client."""
        chat = {"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]}
        regional = FakeUpstream(name="regional", models=["gpt-a"])
        await self._walk("/v1/chat/completions", chat, regional, _OLLAMA_MISSING)

    async def test_openai_stream_model_not_found_falls_back(self) -> None:
        """The same for a streamed chat: the 404 JSON is read before any byte is relayed."""
        chat = {"model": "gpt-a", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        regional = FakeUpstream(name="regional", models=["gpt-a"])
        await self._walk("/v1/chat/completions", chat, regional, _OPENAI_MISSING)

    async def test_v2_unknown_model_falls_back(self) -> None:
        """A v2 upstream whose repository index lists m but whose infer says Triton's
        'unknown model' (404): central answers, and the next request goes there first."""
        infer = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
        regional = FakeUpstream(name="regional", models=[], v2_models=["m"])
        await self._walk("/v2/models/m/infer", infer, regional, _TRITON_MISSING)

    async def test_an_unknown_version_leaves_the_model_believed_served(self) -> None:
        """A request for a version the regional tier lacks (Triton's 'unknown model ...
        version 9'): the next tier answers it, but the regional one is still believed to serve
        the model, so one client asking for a made-up version does not send every other
        request for the model away from it."""
        regional = FakeUpstream(name="regional", models=[], v2_models=["m"])
        central = FakeUpstream(name="central", models=[], v2_models=["m"])
        regional.behaviour.fail_status, regional.behaviour.fail_times = 404, 1
        regional.behaviour.fail_body = (
            b'{"error": "Request for unknown model: \'m\' version 9 is not found"}'
        )
        infer = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
        async with (
            regional_and_central(regional, central) as (app, router, _listings),
            aiohttp.ClientSession() as http,
            asyncio.timeout(10),
        ):
            async with http.post(router.make_url("/v2/models/m/versions/9/infer"), json=infer) as r:
                assert r.status == 200, await r.text()
                assert "failed:regional:model_not_found" in r.headers["X-Route-Reason"]
            async with http.post(router.make_url("/v2/models/m/infer"), json=infer) as r:
                assert r.status == 200, await r.text()
                assert r.headers["X-Route-Reason"].startswith("forward:regional")
            assert "m" in (app[UPSTREAMS].clusters["regional"].models or ())

    async def test_a_client_key_without_access_leaves_the_model_believed_served(self) -> None:
        """Where the client's own key goes upstream (forward_authorization), OpenAI's 404
        model_not_found may only mean that key has no access to the model: the next tier answers
        that client, and the regional one is still believed to serve the model for the others."""
        regional = FakeUpstream(name="regional", models=["gpt-a"])
        central = FakeUpstream(name="central", models=["gpt-a"])
        regional.behaviour.fail_status, regional.behaviour.fail_times = 404, 1
        regional.behaviour.fail_body = _OPENAI_MISSING
        chat = {"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]}
        url = "/v1/chat/completions"
        async with (
            regional_and_central(regional, central, forward_authorization=True) as (app, router, _),
            aiohttp.ClientSession() as http,
            asyncio.timeout(10),
        ):
            async with http.post(router.make_url(url), json=chat) as r:
                assert r.status == 200, await r.text()
                assert "failed:regional:model_not_found" in r.headers["X-Route-Reason"]
            async with http.post(router.make_url(url), json=chat) as r:
                assert r.status == 200, await r.text()
                assert r.headers["X-Route-Reason"].startswith("forward:regional")
            assert "gpt-a" in (app[UPSTREAMS].clusters["regional"].models or ())

    async def test_any_other_404_ends_the_walk(self) -> None:
        """A 404 that does not say the model is unknown is the upstream's answer: relayed."""
        regional = FakeUpstream(name="regional", models=["gpt-a"])
        central = FakeUpstream(name="central", models=["gpt-a"])
        regional.behaviour.fail_status = 404
        regional.behaviour.fail_body = b'{"error": {"message": "no such file", "code": null}}'
        chat = {"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]}
        async with regional_and_central(regional, central) as (_, router, _listings):
            async with (
                aiohttp.ClientSession() as http,
                asyncio.timeout(10),
                http.post(router.make_url("/v1/chat/completions"), json=chat) as r,
            ):
                assert r.status == 404
                assert (await r.json())["error"]["message"] == "no such file"
            assert central.received == []


class TestListingsAreUnique:
    async def test_a_model_two_tiers_serve_is_listed_once(self) -> None:
        """gpt-a and v2 model m served by regional and central: /v1/models has one gpt-a
        (regional preferred, both tiers named), the v2 index one entry per version of m."""
        regional = FakeUpstream(name="regional", models=["gpt-a"], v2_models=["m"])
        regional.v2_versions = ("1", "2")
        central = FakeUpstream(name="central", models=["gpt-a", "gpt-b"], v2_models=["m"])
        async with (
            regional_and_central(regional, central) as (_, router, _listings),
            aiohttp.ClientSession() as http,
            asyncio.timeout(10),
        ):
            async with http.get(router.make_url("/v1/models")) as r:
                data = (await r.json())["data"]
            async with http.get(router.make_url("/v1/models/gpt-a")) as r:
                retrieved = await r.json()
            async with http.post(router.make_url("/v2/repository/index")) as r:
                index = await r.json()
        listed = {item["id"]: item for item in data}
        assert len(listed) == len(data)
        gpt_a = listed["gpt-a"]
        assert (gpt_a["tier"], gpt_a["served_by"]) == ("regional", "regional")
        assert (gpt_a["tiers"], gpt_a["served_by_all"]) == (
            ["regional", "central"],
            ["regional", "central"],
        )
        assert retrieved == gpt_a
        assert (listed["gpt-b"]["tiers"], listed["gpt-b"]["served_by_all"]) == (
            ["central"],
            ["central"],
        )
        m = {item["version"]: item for item in index if item["name"] == "m"}
        assert len(m) == len([item for item in index if item["name"] == "m"])
        assert (m["1"]["tier"], m["1"]["cluster"]) == ("regional", "regional")
        assert (m["1"]["tiers"], m["1"]["clusters"]) == (
            ["regional", "central"],
            ["regional", "central"],
        )
        assert (m["2"]["tiers"], m["2"]["clusters"]) == (["regional"], ["regional"])

    async def test_an_unversioned_listing_adds_no_empty_version(self) -> None:
        """Regional lists v2 model m without versions, central lists versions 1 and 2: the
        index has m:1 and m:2 once each (both reachable through regional, the nearest), no
        m:"", and /v1/models lists m once, preferring regional as the index does."""
        regional = FakeUpstream(name="regional", models=[], v2_models=["m", "only"])
        regional.v2_versions = ("",)
        central = FakeUpstream(name="central", models=[], v2_models=["m"])
        central.v2_versions = ("1", "2")
        async with (
            regional_and_central(regional, central) as (_, router, _listings),
            aiohttp.ClientSession() as http,
            asyncio.timeout(10),
        ):
            async with http.post(router.make_url("/v2/repository/index")) as r:
                index = await r.json()
            async with http.get(router.make_url("/v1/models")) as r:
                data = (await r.json())["data"]
        m = [item for item in index if item["name"] == "m"]
        assert sorted(item["version"] for item in m) == ["1", "2"]
        for item in m:
            assert (item["tier"], item["cluster"]) == ("regional", "regional")
            assert (item["tiers"], item["clusters"]) == (
                ["regional", "central"],
                ["regional", "central"],
            )
        # A model no cluster reports versions of keeps its one unversioned entry.
        assert [item["version"] for item in index if item["name"] == "only"] == [""]
        listed = [item for item in data if item["id"] == "m"]
        assert len(listed) == 1
        assert (listed[0]["tier"], listed[0]["tiers"]) == ("regional", ["regional", "central"])


class TestReadyIndex:
    async def test_ready_filter_leaves_out_a_cluster_that_is_down(self) -> None:
        """`{"ready": true}`: m, which regional (up) and central (down) serve, is listed through
        regional alone, and c, which only central serves, not at all (its /ready is 503); the
        unfiltered index still names every route."""
        regional = FakeUpstream(name="regional", models=[], v2_models=["m"])
        central = FakeUpstream(name="central", models=[], v2_models=["m", "c"])
        central.behaviour.healthy = False
        checks = {"interval_s": 0.1, "healthy_threshold": 1, "unhealthy_threshold": 1}
        async with (
            regional_and_central(regional, central, health_check=checks) as (app, router, _),
            aiohttp.ClientSession() as http,
            asyncio.timeout(10),
        ):
            clusters = app[UPSTREAMS].clusters
            loop = asyncio.get_running_loop()
            deadline = time.monotonic() + 5
            while not clusters["regional"].live(loop.time()) or clusters["central"].models is None:
                assert time.monotonic() < deadline, "no health check or listing in 5 s"
                await asyncio.sleep(0.05)
            assert not clusters["central"].live(loop.time())
            async with http.post(
                router.make_url("/v2/repository/index"), json={"ready": True}
            ) as r:
                ready = {item["name"]: item for item in await r.json()}
            async with http.get(router.make_url("/v2/models/c/ready")) as r:
                c_status = r.status
            async with http.post(router.make_url("/v2/repository/index")) as r:
                every = {item["name"]: item for item in await r.json()}
        assert c_status == 503
        assert "c" not in ready
        assert (ready["m"]["clusters"], ready["m"]["cluster"]) == (["regional"], "regional")
        assert every["m"]["clusters"] == ["regional", "central"]
        assert every["c"]["clusters"] == ["central"]
