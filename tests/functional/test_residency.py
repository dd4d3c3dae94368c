"""Residency at run time (issue 4, TESTING.md P5): an EU site with clusters in the EU and in the
US, the real router app and recording fake upstreams behind fault proxies on 127.0.0.1.

Personal data (found, or declared with X-Data-Class) only ever reaches EU endpoints; internal
data may go to the US. When every EU endpoint is down (stopped, answering 503, or a blackhole)
personal requests fail closed and the US upstream receives nothing: not as a fallback, not on a
retry, not as an escalation target (no panic mode across the boundary). A model served only in
the US answers 403 residency_denied for personal data. Requests are counted at each fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from router.api.state import RUNTIME, UPSTREAMS
from router.app import build_app
from router.settings import Settings
from router.testing import Behaviour, FakeUpstream, FaultProxy, serving

LIMIT_S = 10.0  # any single client call
EDGE_MODELS = Path(__file__).resolve().parents[2] / "edge_models"
EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
CLUSTERS = ("regional-eu", "central-eu", "central-us")


@dataclass
class Site:
    url: str
    app: web.Application
    fakes: dict[str, FakeUpstream]
    proxies: dict[str, FaultProxy]

    @property
    def us(self) -> FakeUpstream:
        return self.fakes["central-us"]

    def counts(self) -> dict[str, int]:
        return {name: len(fake.received) for name, fake in self.fakes.items()}

    def live(self, cluster: str) -> int:
        """How many of a cluster's endpoints the router currently counts as live."""
        now = asyncio.get_running_loop().time()
        snapshot = self.app[UPSTREAMS].snapshot(now, self.app[RUNTIME].current.models)
        return next(c.live_endpoints for c in snapshot.clusters if c.name == cluster)


def cluster(name: str, url: str, models: list[str], health: bool) -> dict[str, Any]:
    tier, jurisdiction = name.split("-")
    return {
        "name": name,
        "tier": tier,
        "endpoints": [{"url": url, "jurisdiction": jurisdiction.upper()}],
        "models": models,
        "connect_timeout_ms": 300,
        "request_timeout_ms": 200,
        "health_check": {
            "enabled": health,
            "path": "/v2/health/ready",
            "interval_s": 0.05,
            "timeout_s": 0.3,
            "healthy_threshold": 1,
            "unhealthy_threshold": 1,
        },
        "outlier": {"consecutive_failures": 1000},  # the test decides what is down
        "retry": {"max_attempts": 3, "base_backoff_ms": 1, "max_backoff_ms": 2},
    }


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(EDGE_MODELS / "color_classifier", root / "color_classifier")
    return root


async def start_site(
    stack: contextlib.AsyncExitStack, repository: Path, *, health: bool = False
) -> Site:
    """An EU edge site; regional-eu, central-eu and central-us each behind a FaultProxy."""
    fakes = {name: FakeUpstream(name=name, behaviour=Behaviour()) for name in CLUSTERS}
    proxies = {}
    for name, fake in fakes.items():
        url = await stack.enter_async_context(serving(fake.app()))
        host, port = url.removeprefix("http://").split(":")
        proxies[name] = await stack.enter_async_context(FaultProxy(host, int(port)))
    shared = ["gpt-eu-us", "v2-eu-us"]
    settings = Settings.model_validate(
        {
            "site": {"id": "plant-eu", "tier": "edge", "jurisdiction": "EU"},
            "models": {"repository": str(repository), "inference_threads": 1},
            "upstreams": [
                cluster("regional-eu", proxies["regional-eu"].url, shared, health),
                cluster("central-eu", proxies["central-eu"].url, [*shared, "big_color"], health),
                cluster(
                    "central-us",
                    proxies["central-us"].url,
                    [*shared, "big_color", "gpt-us-only"],
                    health,
                ),
            ],
            "routing": {
                "models": {
                    "color_classifier": {"escalate": {"to_model": "big_color", "threshold": 0.9}}
                }
            },
        }
    )
    app = build_app(settings)
    url = await stack.enter_async_context(serving(app))
    return Site(url, app, fakes, proxies)


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    @property
    def reasons(self) -> list[str]:
        return str(self.headers.get("X-Route-Reason", "")).split(",")

    @property
    def code(self) -> str:
        """The OpenAI error code; KServe errors have only a message."""
        error = orjson.loads(self.body)["error"]
        return str(error["code"]) if isinstance(error, dict) else error


async def post(
    http: aiohttp.ClientSession, url: str, doc: Any, headers: dict[str, str] | None = None
) -> Answer:
    async with asyncio.timeout(LIMIT_S), http.post(url, json=doc, headers=headers) as response:
        return Answer(response.status, response.headers, await response.read())


def chat(model: str, content: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


def v2(text: str) -> dict[str, Any]:
    return {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": [text]}]}


def rgb(values: list[float], request_id: str) -> dict[str, Any]:
    return {
        "id": request_id,
        "inputs": [{"name": "rgb", "datatype": "FP32", "shape": [1, 3], "data": values}],
    }


# Personal or stricter, three ways: found by detection, declared by the caller, or both.
PERSONAL: list[tuple[str, str, dict[str, str]]] = [
    ("email", f"write to {EMAIL}", {}),
    ("declared", "nothing to see here", {"X-Data-Class": "personal"}),
    ("card", f"refund {CARD}", {}),
    ("declared-and-found", f"mail {EMAIL}", {"X-Data-Class": "personal"}),
]
PERSONAL_IDS = [p[0] for p in PERSONAL]


async def eventually(check: Any, what: str, limit_s: float = 5.0) -> None:
    """Poll state (not time) until `check()` holds."""
    for _ in range(int(limit_s / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"not within {limit_s} s: {what}")


# -- everything up ---------------------------------------------------------------------------


class TestPinnedToJurisdiction:
    @pytest.mark.parametrize(("kind", "text", "headers"), PERSONAL, ids=PERSONAL_IDS)
    async def test_personal_goes_to_eu_only(
        self,
        stack: contextlib.AsyncExitStack,
        repository: Path,
        http: aiohttp.ClientSession,
        kind: str,
        text: str,
        headers: dict[str, str],
    ) -> None:
        """Personal data reaches an EU endpoint; the US cluster is passed over, saying so."""
        site = await start_site(stack, repository)
        for _ in range(5):
            answer = await post(
                http, f"{site.url}/v1/chat/completions", chat("gpt-eu-us", text), headers
            )
            assert answer.status == 200, answer.body
            assert answer.reasons == ["residency:central-us", "forward:regional-eu"]
            answer = await post(http, f"{site.url}/v2/models/v2-eu-us/infer", v2(text), headers)
            assert answer.status == 200, answer.body
        assert site.counts() == {"regional-eu": 10, "central-eu": 0, "central-us": 0}

    async def test_repeated_class_header_takes_the_strictest(
        self, stack: contextlib.AsyncExitStack, repository: Path, http: aiohttp.ClientSession
    ) -> None:
        """Two X-Data-Class headers, `internal` then `personal`: the request is personal (a
        header may only raise the class), so a US-only model is denied and nothing crosses."""
        site = await start_site(stack, repository)
        headers = [("X-Data-Class", "internal"), ("X-Data-Class", "personal")]
        doc = chat("gpt-us-only", "hi")
        async with (
            asyncio.timeout(LIMIT_S),
            http.post(f"{site.url}/v1/chat/completions", json=doc, headers=headers) as response,
        ):
            assert response.status == 403
        assert site.counts() == {"regional-eu": 0, "central-eu": 0, "central-us": 0}

    async def test_internal_may_go_to_us(
        self, stack: contextlib.AsyncExitStack, repository: Path, http: aiohttp.ClientSession
    ) -> None:
        """Data with nothing personal in it may reach a US-only model."""
        site = await start_site(stack, repository)
        answer = await post(http, f"{site.url}/v1/chat/completions", chat("gpt-us-only", "hi"))
        assert answer.status == 200, answer.body
        assert answer.reasons == ["forward:central-us"]
        assert answer.headers["X-Served-By-Tier"] == "central"
        assert site.counts() == {"regional-eu": 0, "central-eu": 0, "central-us": 1}

    @pytest.mark.parametrize(("kind", "text", "headers"), PERSONAL, ids=PERSONAL_IDS)
    async def test_us_only_model_denied(
        self,
        stack: contextlib.AsyncExitStack,
        repository: Path,
        http: aiohttp.ClientSession,
        kind: str,
        text: str,
        headers: dict[str, str],
    ) -> None:
        """A model served only in the US: 403 residency_denied, nothing sent anywhere."""
        site = await start_site(stack, repository)
        answer = await post(
            http, f"{site.url}/v1/chat/completions", chat("gpt-us-only", text), headers
        )
        assert answer.status == 403, answer.body
        assert answer.code == "residency_denied"
        assert answer.reasons == ["residency:central-us"]
        assert EMAIL not in answer.body.decode()
        assert CARD not in answer.body.decode()
        assert site.counts() == {"regional-eu": 0, "central-eu": 0, "central-us": 0}

    async def test_personal_escalates_within_eu(
        self, stack: contextlib.AsyncExitStack, repository: Path, http: aiohttp.ClientSession
    ) -> None:
        """An unsure local answer escalates to the bigger model in the EU, never the US."""
        site = await start_site(stack, repository)
        answer = await post(
            http, f"{site.url}/v2/models/color_classifier/infer", rgb([1, 0, 0], EMAIL)
        )
        assert answer.status == 200, answer.body
        assert answer.reasons == ["local", "escalated_low_confidence:central-eu"]
        assert orjson.loads(answer.body)["id"] == EMAIL
        assert site.counts() == {"regional-eu": 0, "central-eu": 1, "central-us": 0}


# -- every compliant endpoint down -------------------------------------------------------------


async def take_down(site: Site, how: str) -> None:
    """Make every EU endpoint fail in the given way (the US one stays fine)."""
    for name in ("regional-eu", "central-eu"):
        if how == "stopped":
            await site.proxies[name].close()
        elif how == "503":
            site.fakes[name].behaviour = Behaviour(fail_status=503)
        else:
            site.proxies[name].faults.blackhole = True
            site.proxies[name].drop_connections()


DOWN = ["stopped", "503", "blackhole"]


class TestEveryCompliantEndpointDown:
    """No panic mode: the router tries what it may and stops at the boundary."""

    @pytest.mark.parametrize("how", DOWN)
    async def test_personal_fails_closed(
        self,
        stack: contextlib.AsyncExitStack,
        repository: Path,
        http: aiohttp.ClientSession,
        how: str,
    ) -> None:
        """Personal chats and (replayable, retried) v2 requests fail with a 503 naming the
        residency line; the US fake receives nothing; internal data still falls back to it."""
        site = await start_site(stack, repository)
        await take_down(site, how)
        # Each blackholed try waits out its timeout: two kinds show it as well as four.
        kinds = PERSONAL[:2] if how == "blackhole" else PERSONAL
        for kind, text, headers in kinds:
            for path, doc in (
                ("/v1/chat/completions", chat("gpt-eu-us", text)),
                ("/v2/models/v2-eu-us/infer", v2(text)),
            ):
                answer = await post(http, site.url + path, doc, headers)
                assert answer.status == 503, (kind, path, answer.status, answer.body)
                if path.startswith("/v1/"):
                    assert answer.code == "no_healthy_target"
                else:
                    assert answer.code.startswith("no target this request's data may reach")
                assert "residency:central-us" in answer.reasons
                assert not any(r.startswith(("forward:", "fallback:")) for r in answer.reasons)
        assert site.us.received == []

        # The contrast: with nothing personal in it, the same request may cross.
        answer = await post(http, f"{site.url}/v1/chat/completions", chat("gpt-eu-us", "hello"))
        assert answer.status == 200, answer.body
        assert answer.reasons[-1] == "fallback:central-us"
        assert len(site.us.received) == 1

    @pytest.mark.parametrize("how", DOWN)
    async def test_escalation_stays_local(
        self,
        stack: contextlib.AsyncExitStack,
        repository: Path,
        http: aiohttp.ClientSession,
        how: str,
    ) -> None:
        """An unsure answer for personal data whose EU escalation target is down is answered
        locally; the US model is never asked."""
        site = await start_site(stack, repository)
        await take_down(site, how)
        answer = await post(
            http, f"{site.url}/v2/models/color_classifier/infer", rgb([1, 0, 0], EMAIL)
        )
        assert answer.status == 200, answer.body
        assert answer.reasons[0] == "local"
        assert answer.reasons[1].startswith("escalation_failed:")
        assert orjson.loads(answer.body)["model_name"] == "color_classifier"
        assert site.us.received == []

    async def test_retries_stay_inside(
        self, stack: contextlib.AsyncExitStack, repository: Path, http: aiohttp.ClientSession
    ) -> None:
        """Retries of a replayable personal request go to EU endpoints only: each EU cluster
        gets its three tries, the US none."""
        site = await start_site(stack, repository)
        await take_down(site, "503")
        answer = await post(
            http, f"{site.url}/v2/models/v2-eu-us/infer", v2("x"), {"X-Data-Class": "personal"}
        )
        assert answer.status == 503
        assert site.counts() == {"regional-eu": 3, "central-eu": 3, "central-us": 0}


class TestKnownDown:
    """Health checks have marked every EU endpoint down before the request arrives."""

    async def test_clear_503_and_nothing_crosses(
        self, stack: contextlib.AsyncExitStack, repository: Path, http: aiohttp.ClientSession
    ) -> None:
        """A fast 503 with the reasons (unhealthy EU clusters, the US one passed over for
        residency); personal escalation is unavailable; internal data goes
        to the US, escalation included."""
        site = await start_site(stack, repository, health=True)
        for name in ("regional-eu", "central-eu"):
            site.fakes[name].behaviour.healthy = False
        await eventually(
            lambda: site.live("regional-eu") == 0 and site.live("central-eu") == 0,
            "the EU endpoints are marked down",
        )
        assert site.live("central-us") == 1
        for kind, text, headers in PERSONAL:
            answer = await post(
                http, f"{site.url}/v1/chat/completions", chat("gpt-eu-us", text), headers
            )
            assert answer.status == 503, (kind, answer.body)
            # A fast 503 decided up front: 'offline' (no tier that may serve it is reachable).
            assert answer.code == "offline"
            assert answer.headers["Retry-After"]
            assert sorted(answer.reasons) == [
                "offline",
                "residency:central-us",
                "unhealthy:central-eu",
                "unhealthy:regional-eu",
            ]
        answer = await post(
            http, f"{site.url}/v2/models/color_classifier/infer", rgb([1, 0, 0], EMAIL)
        )
        assert answer.reasons == ["local", "escalation_unavailable"]
        assert site.counts() == {"regional-eu": 0, "central-eu": 0, "central-us": 0}

        answer = await post(http, f"{site.url}/v1/chat/completions", chat("gpt-eu-us", "hello"))
        assert (answer.status, answer.reasons[-1]) == (200, "forward:central-us")
        answer = await post(
            http, f"{site.url}/v2/models/color_classifier/infer", rgb([1, 0, 0], "req-7")
        )
        assert answer.reasons == ["local", "escalated_low_confidence:central-us"]
        assert len(site.us.received) == 2
        assert all(EMAIL.encode() not in r.body for r in site.us.received)
