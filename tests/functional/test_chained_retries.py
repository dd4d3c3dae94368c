"""Retries do not multiply across tiers: a failure a chained layer-router reports after its own
retries and fallbacks is not retried against it again, though the next target is still tried."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import aiohttp

from router.app import build_app
from router.settings import Settings
from router.testing import Behaviour, FakeUpstream
from router.testing.servers import serving

MODEL = "big_model"
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]}


def _cluster(name: str, tier: str, url: str) -> dict[str, Any]:
    return {
        "name": name,
        "tier": tier,
        "endpoints": [{"url": url}],
        "health_check": {"enabled": False},
        "retry": {"base_backoff_ms": 5, "max_backoff_ms": 20},
    }


def _site(tier: str, tmp_path: Path, *clusters: dict[str, Any]) -> Settings:
    repository = tmp_path / f"{tier}-models"
    repository.mkdir()
    return Settings.model_validate(
        {
            "site": {"id": f"{tier}-site", "tier": tier},
            "models": {"repository": str(repository), "inference_threads": 1},
            "upstreams": list(clusters),
            "cache": {"enabled": False},
        }
    )


async def _infer(url: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v2/models/{MODEL}/infer", json=BODY) as response,
    ):
        await response.read()
        return response.status, response.headers.get("X-Route-Reason", "")


async def test_a_chained_routers_failure_is_not_retried_against_it(tmp_path: Path) -> None:
    """Central failing every try is reached max_attempts times, not max_attempts squared."""
    central = FakeUpstream("central", models=(), v2_models=(MODEL,))
    central.behaviour = Behaviour(fail_status=500)
    async with contextlib.AsyncExitStack() as stack:
        central_url = await stack.enter_async_context(serving(central.app()))
        regional = build_app(
            _site("regional", tmp_path, _cluster("central", "central", central_url))
        )
        regional_url = await stack.enter_async_context(serving(regional))
        edge = build_app(_site("edge", tmp_path, _cluster("regional", "regional", regional_url)))
        edge_url = await stack.enter_async_context(serving(edge))
        status, reasons = await _infer(edge_url)
    assert status == 502
    assert "failed:central:" in reasons, reasons
    assert len(central.requests_to("/v2/")) == 3, reasons


async def test_a_chained_routers_failure_still_falls_back(tmp_path: Path) -> None:
    """The regional router's failure is not retried, and the edge's next target serves."""
    central = FakeUpstream("central", models=(), v2_models=(MODEL,))
    central.behaviour = Behaviour(fail_status=500)
    direct = FakeUpstream("direct", models=(), v2_models=(MODEL,))
    async with contextlib.AsyncExitStack() as stack:
        central_url = await stack.enter_async_context(serving(central.app()))
        direct_url = await stack.enter_async_context(serving(direct.app()))
        regional = build_app(
            _site("regional", tmp_path, _cluster("central", "central", central_url))
        )
        regional_url = await stack.enter_async_context(serving(regional))
        edge_clusters = (
            _cluster("regional", "regional", regional_url),
            _cluster("direct", "central", direct_url),
        )
        edge = build_app(_site("edge", tmp_path, *edge_clusters))
        edge_url = await stack.enter_async_context(serving(edge))
        status, reasons = await _infer(edge_url)
    assert status == 200, reasons
    assert "fallback:direct" in reasons.split(","), reasons
    assert "failed:regional:upstream_status" in reasons, reasons
    assert len(central.requests_to("/v2/")) == 3
    assert len(direct.requests_to("/v2/")) == 1
