"""A chained layer-router whose tenant policy does not allow the edge router's key a model
answers 403 model_not_allowed: the key is good, only that model is not served to this router
there. The edge tries the next target, counts no auth failure, cools nothing off (the
regional router still serves its other models first), and with no target left tells the
client that no tier serves the model to it (404 model_not_found), never the key. A real
regional router with a tenants bundle, a real edge router and fake upstreams, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from router.api.admin import build_admin_app
from router.api.state import UPSTREAMS
from router.app import build_app
from router.resources import default_policy_bundle
from router.settings import Settings
from router.tenancy import hash_key
from router.testing import FakeUpstream, router_in_front_of, serving
from router.upstreams.cluster import Cluster

ALLOWED = "gpt-test"
OTHER = "gpt-other"
EDGE_KEY = "lr-edge-CANARY-key-0123456789abcdefghijkl"
CLIENT_CANARY = "Bearer CANARY-client-key-7734"
AUTH_LOG = "router.upstreams.cluster"


def tenants() -> str:
    return (
        "default:\n  data_class: internal\ntenants:\n  edge-site:\n"
        f'    keys: ["{hash_key(EDGE_KEY)}"]\n    models: ["{ALLOWED}"]\n'
    )


def upstream(name: str, tier: str, url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "name": name,
        "tier": tier,
        "models": [ALLOWED, OTHER],  # configured: the regional router's refusal is news
        "endpoints": [{"url": url}],
        "connect_timeout_ms": 500,
        "request_timeout_ms": 3000,
        "health_check": {"enabled": False},
        "retry": {"base_backoff_ms": 1, "max_backoff_ms": 5},
        **overrides,
    }


async def regional_router(stack: contextlib.AsyncExitStack, tmp_path: Path, central: str) -> str:
    """A regional layer-router that requires a tenant key; the edge's tenant may use ALLOWED."""
    bundle = tmp_path / "regional-bundle"
    shutil.copytree(default_policy_bundle(), bundle)
    (bundle / "tenants.yaml").write_text(tenants(), encoding="utf-8")
    repository = tmp_path / "regional-models"
    repository.mkdir()
    settings = Settings.model_validate(
        {
            "site": {"id": "regional-1", "tier": "regional"},
            "models": {"repository": str(repository), "inference_threads": 1},
            "policy": {"bundle": str(bundle)},
            "auth": {"mode": "required"},
            "cache": {"enabled": False},
            "upstreams": [upstream("central", "central", central)],
        }
    )
    return await stack.enter_async_context(serving(build_app(settings)))


async def chain(
    stack: contextlib.AsyncExitStack, tmp_path: Path, with_central: bool = True
) -> tuple[web.Application, str, FakeUpstream]:
    """An edge router in front of the regional router (with the edge's key) and, when asked,
    of central directly; returns the edge app, its URL and central's fake."""
    central = FakeUpstream(name="central", models=(ALLOWED, OTHER))
    central_url = await stack.enter_async_context(serving(central.app()))
    regional = await regional_router(stack, tmp_path, central_url)
    clusters = [
        upstream("regional", "regional", regional, headers={"Authorization": f"Bearer {EDGE_KEY}"})
    ]
    if with_central:
        clusters.append(upstream("central", "central", central_url))
    app, url = await router_in_front_of(stack, tmp_path, *clusters)
    return app, url, central


# Each request different, so no answer comes from a cache.
FACES = {
    "openai": lambda model, n: (
        "/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": f"hello {n}"}]},
    ),
    "kserve-v2": lambda model, n: (
        f"/v2/models/{model}/infer",
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [float(n)]}]},
    ),
}
SEQUENCE = itertools.count()


async def ask(
    http: aiohttp.ClientSession, url: str, face: str, model: str
) -> tuple[int, Any, bytes]:
    path, body = FACES[face](model, next(SEQUENCE))
    async with asyncio.timeout(10):
        async with http.post(url + path, json=body, headers={"Authorization": CLIENT_CANARY}) as r:
            return r.status, r.headers, await r.read()


def regional_of(app: web.Application) -> Cluster:
    return app[UPSTREAMS].clusters["regional"]


async def admin_text(stack: contextlib.AsyncExitStack, app: web.Application) -> str:
    admin = await stack.enter_async_context(serving(build_admin_app(app)))
    async with aiohttp.ClientSession() as http, asyncio.timeout(10):
        async with http.get(f"{admin}/metrics") as metrics:
            text = await metrics.text()
        async with http.get(f"{admin}/status") as status:
            return text + await status.text()


class TestChainedModelNotAllowed:
    @pytest.mark.parametrize("face", list(FACES))
    async def test_the_next_tier_serves_a_model_the_regional_router_refuses_us(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture,
        face: str,
    ) -> None:
        """The regional router's 403 model_not_allowed hands the request to central, with no
        auth failure counted or logged and no cool-off; the next request for that model goes
        to central first, while the model the key may use is still regional's first."""
        app, url, central = await chain(stack, tmp_path)
        regional = regional_of(app)
        with caplog.at_level(logging.INFO):
            status, headers, body = await ask(http, url, face, OTHER)
            assert status == 200, body
            assert headers["X-Route-Reason"] == "failed:regional:model_not_found,fallback:central"
            status, headers, body = await ask(http, url, face, OTHER)
            assert status == 200, body
            assert headers["X-Route-Reason"] == "forward:central"
            before = len(central.received)
            status, headers, body = await ask(http, url, face, ALLOWED)
            assert status == 200, body
            assert headers["X-Route-Reason"].startswith("forward:regional")
            assert len(central.received) == before + 1  # through the regional router
        assert regional.counters.auth_failures == 0
        assert not regional.auth_failing
        assert not regional.auth_cooling_off(asyncio.get_running_loop().time())
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        told = [r.getMessage() for r in caplog.records if r.name == AUTH_LOG]
        assert len(told) == 1
        assert "model_not_allowed" in told[0]
        assert OTHER in told[0]
        assert "CANARY" not in caplog.text
        views = await admin_text(stack, app)
        assert 'upstream_auth_failures_total{cluster="regional",tier="regional"} 0.0' in views
        assert "CANARY" not in views

    @pytest.mark.parametrize("face", list(FACES))
    async def test_with_no_target_left_no_tier_serves_the_model(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        face: str,
    ) -> None:
        """With only the regional router, the client gets 404 model_not_found naming the
        cluster and the model (not a 403 blaming its own tenant, not a 502 blaming a key),
        and the same answer again while the refusal holds; no key in any answer."""
        app, url, _ = await chain(stack, tmp_path, with_central=False)
        first = await ask(http, url, face, OTHER)
        second = await ask(http, url, face, OTHER)
        for status, headers, body in (first, second):
            assert status == 404, body
            assert b"CANARY" not in body
            assert "CANARY" not in str(headers)
        message = orjson.loads(first[2])["error"]
        if face == "openai":
            assert message["code"] == "model_not_found"
            message = message["message"]
        assert "regional" in message
        assert OTHER in message
        assert first[1]["X-Route-Reason"].startswith("failed:regional:model_not_found")
        assert regional_of(app).counters.auth_failures == 0
        status, _, body = await ask(http, url, face, ALLOWED)
        assert status == 200, body


class TestModelNotAllowedByCode:
    async def test_an_openai_style_refusal_code_counts_too(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """An upstream that says model_not_allowed only in its error code (a gateway, an older
        router without the reason header) is read the same way for the router's own key."""

        async def refuse(request: web.Request) -> web.Response:
            error = {"message": "no", "type": "invalid_request_error", "code": "model_not_allowed"}
            return web.json_response({"error": error}, status=403)

        gateway = web.Application()
        gateway.router.add_post("/v1/chat/completions", refuse)
        gateway_url = await stack.enter_async_context(serving(gateway))
        central = FakeUpstream(name="central", models=(ALLOWED, OTHER))
        central_url = await stack.enter_async_context(serving(central.app()))
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            upstream(
                "regional",
                "regional",
                gateway_url,
                protocols=["openai"],
                headers={"Authorization": f"Bearer {EDGE_KEY}"},
            ),
            upstream("central", "central", central_url),
        )
        status, headers, body = await ask(http, url, "openai", OTHER)
        assert status == 200, body
        assert headers["X-Route-Reason"] == "failed:regional:model_not_found,fallback:central"
        assert regional_of(app).counters.auth_failures == 0


class TestMetadataOfAModelNotAllowed:
    @pytest.mark.parametrize("route", ["", "/ready", "/config", "/stats"])
    async def test_metadata_refused_for_the_model_is_no_refused_key(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        route: str,
    ) -> None:
        """The regional router's 403 to a metadata request for a model the edge's key may not
        use refuses the model, not the key: no auth failure, no cool-off, so the model the
        key may use is still regional's first."""
        app, url, _ = await chain(stack, tmp_path)
        async with asyncio.timeout(10):
            async with http.get(f"{url}/v2/models/{OTHER}{route}") as response:
                body = await response.read()
        assert response.status != 502, body
        regional = regional_of(app)
        assert regional.counters.auth_failures == 0
        assert not regional.auth_cooling_off(asyncio.get_running_loop().time())
        status, headers, body = await ask(http, url, "kserve-v2", ALLOWED)
        assert status == 200, body
        assert headers["X-Route-Reason"].startswith("forward:regional")
