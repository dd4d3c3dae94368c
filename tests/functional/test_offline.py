"""Offline mode (TESTING.md R8, short R9): when every remote tier is blackholed the site goes
local-only within seconds: local requests keep succeeding, upstream-only ones get a fast,
clear 503 `offline`, and service comes back by itself when the link returns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from router.app import build_app
from router.settings import Settings
from router.testing import FakeUpstream, FaultProxy

EDGE_MODELS = Path(__file__).resolve().parents[2] / "edge_models"
LOCAL = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, 0]}]}
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def site() -> AsyncIterator[tuple[str, FaultProxy]]:
    fake = FakeUpstream(name="regional", models=["gpt-test"])
    upstream = TestServer(fake.app(), host="127.0.0.1")
    await upstream.start_server()
    proxy = await FaultProxy("127.0.0.1", upstream.port or 0).start()
    settings = Settings.model_validate(
        {
            "models": {"repository": EDGE_MODELS, "inference_threads": 1},
            "cache": {"enabled": False},
            "upstreams": [
                {
                    "name": "regional",
                    "tier": "regional",
                    "endpoints": [{"url": proxy.url}],
                    "request_timeout_ms": 500,
                    "health_check": {"interval_s": 0.2, "timeout_s": 0.2},
                }
            ],
        }
    )
    router = TestServer(build_app(settings), host="127.0.0.1")
    await router.start_server()
    try:
        yield str(router.make_url("")).rstrip("/"), proxy
    finally:
        await router.close()
        await proxy.close()
        await upstream.close()


async def _post(http: aiohttp.ClientSession, url: str, doc: object) -> tuple[int, str]:
    async with asyncio.timeout(5):
        async with http.post(url, json=doc) as response:
            await response.read()
            return response.status, response.headers.get("X-Route-Reason", "")


async def _until(check: object, limit_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if await check():  # type: ignore[operator]
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached within {limit_s} s")


class TestOffline:
    async def test_blackholed_tiers_go_local_only_and_come_back(
        self, site: tuple[str, FaultProxy]
    ) -> None:
        """Blackholed: local answers never fail, upstream-only ones turn into fast 503s
        with reason offline within 3 s; unblocked: the upstream serves again by itself."""
        base, proxy = site
        async with aiohttp.ClientSession() as http:
            assert (await _post(http, base + "/v1/chat/completions", CHAT))[0] == 200
            proxy.faults.blackhole = True
            proxy.drop_connections()
            local_failures = 0

            async def upstream_offline() -> bool:
                nonlocal local_failures
                status, _ = await _post(http, base + "/v2/models/color_classifier/infer", LOCAL)
                local_failures += status != 200
                status, reason = await _post(http, base + "/v1/chat/completions", CHAT)
                return status == 503 and "offline" in reason

            await _until(upstream_offline, 3.0)
            started = time.monotonic()
            status, reason = await _post(http, base + "/v1/chat/completions", CHAT)
            assert (status, time.monotonic() - started < 0.5) == (503, True)
            assert "offline" in reason
            assert local_failures == 0

            proxy.faults.blackhole = False

            async def upstream_back() -> bool:
                return (await _post(http, base + "/v1/chat/completions", CHAT))[0] == 200

            await _until(upstream_back, 5.0)

    async def test_forced_offline_never_forwards(self, tmp_path: Path) -> None:
        """`routing.offline` (serve --offline) answers locally and refuses upstream work."""
        fake = FakeUpstream(name="regional", models=["gpt-test"])
        upstream = TestServer(fake.app(), host="127.0.0.1")
        await upstream.start_server()
        settings = Settings.model_validate(
            {
                "models": {"repository": EDGE_MODELS, "inference_threads": 1},
                "routing": {"offline": True},
                "upstreams": [
                    {
                        "name": "regional",
                        "tier": "regional",
                        "models": ["gpt-test"],
                        "endpoints": [{"url": str(upstream.make_url("")).rstrip("/")}],
                    }
                ],
            }
        )
        router = TestServer(build_app(settings), host="127.0.0.1")
        await router.start_server()
        try:
            base = str(router.make_url("")).rstrip("/")
            async with aiohttp.ClientSession() as http:
                status, _ = await _post(http, base + "/v2/models/color_classifier/infer", LOCAL)
                assert status == 200
                status, reason = await _post(http, base + "/v1/chat/completions", CHAT)
                assert status == 503
                assert "offline" in reason
            assert fake.received == []
        finally:
            await router.close()
            await upstream.close()

    async def test_forced_offline_without_discovery_says_offline(self) -> None:
        """A site started offline never learnt what its upstream serves: a model it does not
        hold locally is 503 offline (it may be served upstream), not 404 unknown."""
        settings = Settings.model_validate(
            {
                "models": {"repository": EDGE_MODELS, "inference_threads": 1},
                "routing": {"offline": True},
                "upstreams": [
                    {
                        "name": "central",
                        "tier": "central",
                        "endpoints": [{"url": "http://127.0.0.1:9"}],  # never reached
                    }
                ],
            }
        )
        router = TestServer(build_app(settings), host="127.0.0.1")
        await router.start_server()
        try:
            base = str(router.make_url("")).rstrip("/")
            async with aiohttp.ClientSession() as http:
                status, reason = await _post(http, base + "/v1/chat/completions", CHAT)
                assert (status, reason) == (503, "offline")
                status, reason = await _post(http, base + "/v2/models/big/infer", LOCAL)
                assert (status, reason) == (503, "offline")
        finally:
            await router.close()

    async def test_started_with_the_link_down_says_offline(self) -> None:
        """A site started while its only upstream is unreachable (not forced offline) never
        learnt what that upstream serves: a model it does not hold is 503 offline with
        Retry-After, as for any upstream model while offline, not 404 unknown model."""
        settings = Settings.model_validate(
            {
                "models": {"repository": EDGE_MODELS, "inference_threads": 1},
                "upstreams": [
                    {
                        "name": "central",
                        "tier": "central",
                        "endpoints": [{"url": "http://127.0.0.1:9"}],  # refuses connections
                        "health_check": {"interval_s": 0.2, "timeout_s": 0.2},
                    }
                ],
            }
        )
        router = TestServer(build_app(settings), host="127.0.0.1")
        await router.start_server()
        try:
            base = str(router.make_url("")).rstrip("/")
            async with aiohttp.ClientSession() as http:

                async def down() -> bool:
                    status, _ = await _post(http, base + "/v1/chat/completions", CHAT)
                    return status != 404

                await _until(down, 3.0)
                for path, doc in (("/v1/chat/completions", CHAT), ("/v2/models/big/infer", LOCAL)):
                    async with http.post(base + path, json=doc) as response:
                        assert response.status == 503, path
                        assert response.headers["X-Route-Reason"] == "unhealthy:central,offline"
                        assert int(response.headers["Retry-After"]) > 0
                status, reason = await _post(
                    http, base + "/v2/models/color_classifier/infer", LOCAL
                )
                assert (status, reason) == (200, "local")
        finally:
            await router.close()
