"""Version pinning: a bundle's versions.yaml names the versions a tier may serve; the router
never forwards a pinned model to a cluster reporting another version (or none), and reports
the drift in the bundle status of `GET /v2`."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from router.api.admin import status_document
from router.api.state import RELOADER, UPSTREAMS
from router.app import build_app
from router.resources import default_policy_bundle
from router.settings import Settings
from router.testing import FakeUpstream

EDGE_MODELS = Path(__file__).resolve().parents[2] / "edge_models"
INFER = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}


def pinned_bundle(tmp_path: Path, versions: list[str]) -> Path:
    folder = tmp_path / "bundle"
    if not folder.exists():
        shutil.copytree(default_policy_bundle(), folder)
    pins = ", ".join(f'"{v}"' for v in versions)
    (folder / "versions.yaml").write_text(f"tiers:\n  regional:\n    heavy: [{pins}]\n")
    return folder


def cluster(name: str, url: str, protocols: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "tier": "regional",
        "protocols": protocols,
        "endpoints": [{"url": url}],
        "discovery_interval_s": 3600,
        "health_check": {"enabled": False},
    }


@pytest.fixture
async def regional() -> AsyncIterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream(name="regional", models=(), v2_models=("heavy",), v2_versions=("1",))
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    await server.close()


async def started(settings: Settings) -> tuple[TestServer, Any]:
    app = build_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, app


async def test_a_drifted_cluster_gets_no_request_until_the_pin_allows_it(
    tmp_path: Path, regional: tuple[FakeUpstream, str]
) -> None:
    """Regional reports heavy v1 while the bundle allows only v2: 403, nothing forwarded, drift
    reported; a reloaded bundle allowing v1 lets the same request through."""
    fake, url = regional
    settings = Settings.model_validate(
        {
            "cache": {"enabled": False},
            "upstreams": [cluster("regional", url, ["kserve-v2"])],
            "policy": {"bundle": pinned_bundle(tmp_path, ["2"])},
        }
    )
    server, app = await started(settings)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(server.make_url("/v2/models/heavy/infer"), json=INFER) as r:
                assert r.status == 403
                assert "version_pinned:regional" in r.headers["X-Route-Reason"]
            assert fake.requests_to("/v2/models/heavy") == []
            drift = (await status_document(app))["policy"]["drift"]
            assert drift == [
                {
                    "model": "heavy",
                    "tier": "regional",
                    "served_by": "regional",
                    "allowed": ["2"],
                    "reported": ["1"],
                    "outside": ["1"],
                }
            ]
            pinned_bundle(tmp_path, ["1", "2"])
            assert await app[RELOADER].reload("test")
            async with http.post(server.make_url("/v2/models/heavy/infer"), json=INFER) as r:
                assert r.status == 200
            assert len(fake.requests_to("/v2/models/heavy")) == 1
            assert (await status_document(app))["policy"]["drift"] == []
    finally:
        await server.close()


async def test_a_cluster_that_reports_no_versions_is_not_trusted_with_a_pinned_model(
    tmp_path: Path, regional: tuple[FakeUpstream, str]
) -> None:
    """A statically configured cluster reports no versions: for a pinned model it is drift."""
    fake, url = regional
    static = {**cluster("regional", url, ["kserve-v2"]), "models": ["heavy"]}
    settings = Settings.model_validate(
        {
            "cache": {"enabled": False},
            "upstreams": [static],
            "policy": {"bundle": pinned_bundle(tmp_path, ["1"])},
        }
    )
    server, app = await started(settings)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(server.make_url("/v2/models/heavy/infer"), json=INFER) as r:
                assert r.status == 403
            (item,) = (await status_document(app))["policy"]["drift"]
            assert item["outside"] == ["unknown"]
        assert fake.requests_to("/v2/models/heavy") == []
    finally:
        await server.close()


async def test_a_router_in_front_sees_the_versions_behind_a_router(
    regional: tuple[FakeUpstream, str],
) -> None:
    """A router's repository index passes on the versions its clusters report, so an edge in
    front of a regional router can pin the models the regional tier forwards."""
    _, url = regional
    middle = Settings.model_validate(
        {
            "site": {"id": "middle", "tier": "regional"},
            "upstreams": [cluster("c", url, ["kserve-v2"])],
        }
    )
    middle_server, _ = await started(middle)
    try:
        front = Settings.model_validate(
            {
                "upstreams": [
                    cluster("regional", str(middle_server.make_url("")).rstrip("/"), ["kserve-v2"])
                ]
            }
        )
        front_server, front_app = await started(front)
        try:
            versions = front_app[UPSTREAMS].clusters["regional"].versions
            assert versions["heavy"] == frozenset({"1"})
        finally:
            await front_server.close()
    finally:
        await middle_server.close()


async def test_escalation_respects_the_pins(
    tmp_path: Path, regional: tuple[FakeUpstream, str]
) -> None:
    """A low-confidence local answer escalates to the large model only where its versions are
    allowed: regional reports heavy v1 against a pin of v2, so the local answer stands
    (escalation_unavailable) and regional gets nothing."""
    fake, url = regional
    settings = Settings.model_validate(
        {
            "models": {"repository": EDGE_MODELS, "inference_threads": 1},
            "cache": {"enabled": False},
            "upstreams": [cluster("regional", url, ["kserve-v2"])],
            "policy": {"bundle": pinned_bundle(tmp_path, ["2"])},
            "routing": {
                "models": {
                    "color_classifier": {"escalate": {"to_model": "heavy", "threshold": 0.99}}
                }
            },
        }
    )
    red = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, 0]}]}
    server, _ = await started(settings)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(server.make_url("/v2/models/color_classifier/infer"), json=red) as r,
        ):
            assert r.status == 200
            assert r.headers["X-Served-By-Tier"] == "edge"
            assert r.headers["X-Route-Reason"] == "local,escalation_unavailable"
        assert fake.requests_to("/v2/models/heavy") == []
    finally:
        await server.close()
