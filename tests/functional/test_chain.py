"""A chain of three real layer-routers on loopback, edge -> regional -> central, with the real
`openai` SDK and `tritonclient` talking to the edge, unmodified.

    edge      color_classifier (v1, v2)   escalates low-confidence answers to the large model
    regional  hotspot_detector
    central   color_classifier_large (color_classifier v1's graph) and an OpenAI fake LLM

Shown here: the latency budget shrinks hop by hop, the answer names the tier that served it and
every router's reasons, low-confidence answers escalate, and a dead regional tier falls back to
central."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort
import openai
import orjson
import pytest
import tritonclient.http as triton_http
from aiohttp import web
from multidict import CIMultiDict

from router.api.respond import CTX
from router.app import build_app
from router.resources import default_policy_bundle
from router.settings import PolicySettings, Settings
from router.tenancy import hash_key
from router.testing import (
    AppThread,
    Behaviour,
    FakeUpstream,
    FaultProxy,
    Recorded,
    RouterThread,
)

TIMEOUT_S = 30.0
Reference = Callable[[Path], ort.InferenceSession]
MESSAGES: list[Any] = [{"role": "user", "content": "how far is the central tier"}]
RED, WHITE = [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]  # v2 top score 0.629; v1 top score 0.999


@dataclass
class Hop:
    """A router of the chain, and every POST it received."""

    server: AppThread
    received: list[Recorded] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def last(self, path: str) -> Recorded:
        return [r for r in self.received if r.path == path][-1]


@dataclass
class Chain:
    edge: Hop
    regional: Hop
    central: Hop
    llm: FakeUpstream
    edge_repo: Path
    central_repo: Path


def cluster(name: str, tier: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "tier": tier,
        "endpoints": [{"url": url}],
        "health_check": {"interval_s": 0.2, "timeout_s": 2.0},
        "discovery_interval_s": 1.0,
        "retry": {"base_backoff_ms": 5, "max_backoff_ms": 20},
        **extra,
    }


def site(tier: str, repo: Path, upstreams: list[dict[str, Any]], **routing: Any) -> Settings:
    return Settings.model_validate(
        {
            "site": {"id": f"{tier}-site", "tier": tier},
            "models": {"repository": repo, "inference_threads": 1},
            "upstreams": upstreams,
            "routing": routing,
            # These tests watch routing happen on every request: no cached answers.
            "cache": {"enabled": False},
        }
    )


def escalating(threshold: float) -> dict[str, Any]:
    rule = {"to_model": "color_classifier_large", "threshold": threshold}
    return {"models": {"color_classifier": {"escalate": rule}}}


def start_hop(settings: Settings) -> Hop:
    """A router that also records every POST it receives, as the fake upstreams do."""
    received: list[Recorded] = []
    server = AppThread(lambda: recording(build_app(settings), received))
    server.start()
    return Hop(server, received)


def recording(app: web.Application, into: list[Recorded]) -> web.Application:
    async def record(request: web.Request, response: web.StreamResponse) -> None:
        if request.method == "POST":
            ctx = request.get(CTX)  # the body as the handler read it
            body = ctx.body if ctx is not None else b""
            headers = CIMultiDict(request.headers)
            into.append(Recorded(request.method, request.path, headers, body, time.monotonic()))

    app.on_response_prepare.append(record)
    return app


@pytest.fixture(scope="module")
def repos(edge_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chain")
    edge, regional, central = root / "edge", root / "regional", root / "central"
    shutil.copytree(edge_models / "color_classifier", edge / "color_classifier")
    shutil.copytree(edge_models / "hotspot_detector", regional / "hotspot_detector")
    large = central / "color_classifier_large"
    (large / "1").mkdir(parents=True)
    shutil.copy(edge_models / "color_classifier" / "1" / "model.onnx", large / "1")
    shutil.copy(edge_models / "color_classifier" / "config.yaml", large)
    return {"edge": edge, "regional": regional, "central": central}


@pytest.fixture(scope="module")
def chain(repos: dict[str, Path]) -> Iterator[Chain]:
    """Started from the far end, so each router discovers what is behind its upstream."""
    llm = FakeUpstream(name="llm", models=("gpt-test",))
    hops: list[AppThread] = []
    with AppThread(llm.app) as llm_server:
        try:
            llm_cluster = cluster("llm", "central", llm_server.url, protocols=["openai"])
            central = start_hop(site("central", repos["central"], [llm_cluster]))
            hops.append(central.server)
            regional = start_hop(
                site("regional", repos["regional"], [cluster("central", "central", central.url)])
            )
            hops.append(regional.server)
            edge_upstreams = [
                cluster("regional", "regional", regional.url),
                cluster("central", "central", central.url),
            ]
            edge = start_hop(site("edge", repos["edge"], edge_upstreams, **escalating(0.99)))
            hops.append(edge.server)
            yield Chain(edge, regional, central, llm, repos["edge"], repos["central"])
        finally:
            for server in reversed(hops):
                server.stop()


@pytest.fixture
def triton(chain: Chain) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(
        chain.edge.server.host_port, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S
    )
    yield client
    client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
        yield session


def rgb_body(*rows: list[float]) -> dict[str, Any]:
    data = [v for row in rows for v in row]
    return {"inputs": [{"name": "rgb", "shape": [len(rows), 3], "datatype": "FP32", "data": data}]}


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], **headers: str
) -> tuple[int, CIMultiDict[str], dict[str, Any]]:
    async with http.post(url, json=body, headers=headers) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.json(content_type=None)


def reference_probs(reference: Reference, path: Path, rows: list[list[float]]) -> np.ndarray:
    (probs,) = reference(path).run(None, {"rgb": np.array(rows, dtype=np.float32)})
    return np.asarray(probs)


class TestBudgetAndTrace:
    """What travels along the chain with a request."""

    async def test_budget_shrinks_hop_by_hop(
        self, http: aiohttp.ClientSession, chain: Chain
    ) -> None:
        """Each router passes on less budget than it got; central's v2 timeout agrees."""
        path = "/v2/models/color_classifier_large/infer"
        status, headers, _ = await post(
            http, chain.edge.url + path, rgb_body(RED), **{"X-Latency-Budget-Ms": "5000"}
        )
        assert status == 200
        assert headers["X-Served-By-Tier"] == "central"
        at_regional = int(chain.regional.last(path).headers["X-Latency-Budget-Ms"])
        at_central = chain.central.last(path)
        central_ms = int(at_central.headers["X-Latency-Budget-Ms"])
        assert 0 < central_ms <= at_regional < 5000
        assert orjson.loads(at_central.body)["parameters"]["timeout"] == central_ms * 1000

    async def test_reasons_and_tier_through_the_chain(
        self, http: aiohttp.ClientSession, chain: Chain
    ) -> None:
        """The answer names central as its tier and each router's reasons, joined by `>`."""
        status, headers, doc = await post(
            http,
            chain.edge.url + "/v2/models/color_classifier_large/infer",
            rgb_body(RED),
            **{"X-Request-Id": "chain-req-1"},
        )
        assert status == 200
        assert doc["model_name"] == "color_classifier_large"
        assert headers["X-Served-By-Tier"] == "central"
        assert headers["X-Route-Reason"] == "forward:regional>forward:central>local"
        assert headers["X-Request-Id"] == "chain-req-1"

    async def test_ids_and_hops_propagate(self, http: aiohttp.ClientSession, chain: Chain) -> None:
        """The request id and trace id reach central; each router counts one more hop."""
        trace_id = "0af7651916cd43dd8448eb211c80319c"
        path = "/v2/models/color_classifier_large/infer"
        await post(
            http,
            chain.edge.url + path,
            rgb_body(RED),
            **{"X-Request-Id": "chain-req-2", "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
        )
        spans = set()
        for hop, count in ((chain.regional, "1"), (chain.central, "2")):
            seen = hop.last(path).headers
            assert seen["X-Request-Id"] == "chain-req-2"
            _, seen_trace, span, _ = seen["traceparent"].split("-")
            assert seen_trace == trace_id
            spans.add(span)
            assert seen["X-Layer-Router-Hops"] == count
        assert len(spans | {"b7ad6b7169203331"}) == 3

    async def test_regional_model_served_by_regional(
        self, http: aiohttp.ClientSession, chain: Chain
    ) -> None:
        """A model the regional tier holds stops there."""
        frame = [30.0] * 64
        body = {
            "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": frame}]
        }
        before = len(chain.central.received)
        status, headers, _ = await post(
            http, chain.edge.url + "/v2/models/hotspot_detector/infer", body
        )
        assert status == 200
        assert headers["X-Served-By-Tier"] == "regional"
        assert headers["X-Route-Reason"] == "forward:regional>local"
        assert len(chain.central.received) == before


class TestEscalation:
    """Small-model fronting: low-confidence local answers go to the large model upstream."""

    async def test_low_confidence_escalated(
        self, http: aiohttp.ClientSession, chain: Chain, reference: Reference
    ) -> None:
        """Red scores 0.63 on the local v2 model, below 0.99: central's large model answers."""
        status, headers, doc = await post(
            http, chain.edge.url + "/v2/models/color_classifier/infer", rgb_body(RED)
        )
        assert status == 200
        assert doc["model_name"] == "color_classifier_large"
        assert headers["X-Served-By-Tier"] == "central"
        reasons = headers["X-Route-Reason"]
        assert reasons == "local,escalated_low_confidence:regional>forward:central>local"
        expected = reference_probs(
            reference, chain.central_repo / "color_classifier_large" / "1" / "model.onnx", [RED]
        )
        np.testing.assert_allclose(doc["outputs"][0]["data"], expected.ravel(), rtol=1e-5)

    async def test_confident_answer_stays_local(
        self, http: aiohttp.ClientSession, chain: Chain
    ) -> None:
        """White scores 0.999 on local v1, above the threshold: answered at the edge."""
        before = len(chain.regional.received)
        status, headers, doc = await post(
            http, chain.edge.url + "/v2/models/color_classifier/versions/1/infer", rgb_body(WHITE)
        )
        assert status == 200
        assert doc["model_name"] == "color_classifier"
        assert headers["X-Served-By-Tier"] == "edge"
        assert headers["X-Route-Reason"] == "local"
        assert len(chain.regional.received) == before

    async def test_one_weak_row_escalates_the_batch(
        self, http: aiohttp.ClientSession, chain: Chain
    ) -> None:
        """A batch is judged by its weakest row."""
        status, headers, doc = await post(
            http,
            chain.edge.url + "/v2/models/color_classifier/versions/1/infer",
            rgb_body(WHITE, RED),
        )
        assert status == 200
        assert headers["X-Served-By-Tier"] == "central"
        assert doc["outputs"][0]["shape"] == [2, 10]

    def test_escalation_with_binary_tensors(
        self, triton: triton_http.InferenceServerClient, reference: Reference, chain: Chain
    ) -> None:
        """tritonclient's binary request escalates intact and gets the large model's tensors."""
        rows = [RED, [0.5, 0.5, 0.5]]
        tensor = triton_http.InferInput("rgb", [2, 3], "FP32")
        tensor.set_data_from_numpy(np.array(rows, dtype=np.float32), binary_data=True)
        result = triton.infer("color_classifier", [tensor])
        assert result.get_response()["model_name"] == "color_classifier_large"
        expected = reference_probs(
            reference, chain.central_repo / "color_classifier_large" / "1" / "model.onnx", rows
        )
        np.testing.assert_allclose(result.as_numpy("probs"), expected, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("refusal", [400, 404])
    async def test_refused_escalation_keeps_the_local_answer(
        self, http: aiohttp.ClientSession, chain: Chain, refusal: int
    ) -> None:
        """The large model's tier answers 4xx (it lost the model, or refuses the input): the
        client gets the local answer with `escalation_failed`, not the upstream's error."""
        big = FakeUpstream(
            name="big",
            models=(),
            v2_models=("color_classifier_large",),
            behaviour=Behaviour(fail_status=refusal),
        )
        with AppThread(big.app) as big_server:
            settings = site(
                "edge",
                chain.edge_repo,
                [cluster("central", "central", big_server.url)],
                **escalating(0.99),
            )
            edge = RouterThread(settings)
            await asyncio.to_thread(edge.start)
            try:
                status, headers, doc = await post(
                    http, edge.url + "/v2/models/color_classifier/infer", rgb_body(RED)
                )
            finally:
                await asyncio.to_thread(edge.stop)
        assert len(big.received) == 1
        assert status == 200
        assert doc["model_name"] == "color_classifier"
        assert headers["X-Served-By-Tier"] == "edge"
        assert headers["X-Route-Reason"] == f"local,escalation_failed:upstream_status_{refusal}"

    async def test_a_tenant_is_not_escalated_to_a_model_outside_its_list(
        self, http: aiohttp.ClientSession, chain: Chain, tmp_path: Path
    ) -> None:
        """A tenant whose list holds the small model only gets the local answer, marked
        `escalation_not_allowed`, and the large model is never asked; a tenant that may use
        both is escalated as before."""
        big = FakeUpstream(name="big", models=(), v2_models=("color_classifier_large",))
        small_only, both = (
            "lr-small-only-key-0123456789abcdefghij",
            "lr-both-key-0123456789abcdefghij",
        )
        bundle = tmp_path / "bundle"
        shutil.copytree(default_policy_bundle(), bundle)
        (bundle / "tenants.yaml").write_text(
            "tenants:\n"
            f"  small: {{keys: ['{hash_key(small_only)}'], models: [color_classifier]}}\n"
            f"  both: {{keys: ['{hash_key(both)}'], models: ['color_classifier*']}}\n"
        )
        with AppThread(big.app) as big_server:
            settings = site(
                "edge",
                chain.edge_repo,
                [cluster("central", "central", big_server.url)],
                **escalating(0.99),
            ).model_copy(update={"policy": PolicySettings(bundle=bundle)})
            edge = RouterThread(settings)
            await asyncio.to_thread(edge.start)
            try:
                url = edge.url + "/v2/models/color_classifier/infer"
                small = await post(http, url, rgb_body(RED), Authorization=f"Bearer {small_only}")
                asked_before = len(big.received)
                large = await post(http, url, rgb_body(RED), Authorization=f"Bearer {both}")
            finally:
                await asyncio.to_thread(edge.stop)
        status, headers, doc = small
        assert (status, doc["model_name"]) == (200, "color_classifier")
        assert headers["X-Route-Reason"] == "local,escalation_not_allowed"
        assert asked_before == 0
        status, headers, doc = large
        assert status == 200
        assert headers["X-Route-Reason"] == "local,escalated_low_confidence:central"
        assert len(big.received) == 1

    async def test_escalation_falls_back_past_a_dead_regional(
        self, http: aiohttp.ClientSession, chain: Chain, repos: dict[str, Path]
    ) -> None:
        """The first tier with the large model is gone before the edge notices: the escalation
        walks on to central, as any request's fallback does, instead of keeping the weak
        local answer."""
        regional = RouterThread(
            site("regional", repos["regional"], [cluster("central", "central", chain.central.url)])
        )
        await asyncio.to_thread(regional.start)
        upstreams = [
            cluster(
                "regional",
                "regional",
                regional.url,
                models=["color_classifier_large"],
                health_check={"enabled": False},
                retry={"max_attempts": 1},
            ),
            cluster("central", "central", chain.central.url),
        ]
        edge = RouterThread(site("edge", chain.edge_repo, upstreams, **escalating(0.99)))
        await asyncio.to_thread(edge.start)
        try:
            await asyncio.to_thread(regional.stop)
            status, headers, doc = await post(
                http, edge.url + "/v2/models/color_classifier/infer", rgb_body(RED)
            )
        finally:
            await asyncio.to_thread(edge.stop)
        assert status == 200
        assert doc["model_name"] == "color_classifier_large"
        assert headers["X-Served-By-Tier"] == "central"
        reasons = headers["X-Route-Reason"]
        assert re.fullmatch(
            r"local,failed:regional:upstream_\w+,escalated_low_confidence:central>local", reasons
        )

    async def test_low_threshold_serves_locally(
        self, http: aiohttp.ClientSession, chain: Chain
    ) -> None:
        """With the threshold at 0.5, red (0.63) is confident enough for the edge."""
        settings = site(
            "edge",
            chain.edge_repo,
            [cluster("regional", "regional", chain.regional.url)],
            **escalating(0.5),
        )
        lenient = RouterThread(settings)
        await asyncio.to_thread(lenient.start)
        try:
            status, headers, doc = await post(
                http, lenient.url + "/v2/models/color_classifier/infer", rgb_body(RED)
            )
        finally:
            await asyncio.to_thread(lenient.stop)
        assert status == 200
        assert doc["model_name"] == "color_classifier"
        assert (headers["X-Served-By-Tier"], headers["X-Route-Reason"]) == ("edge", "local")


class TestFallback:
    """A regional tier that stops answering hands over to central."""

    async def test_blackholed_regional_falls_back(
        self, http: aiohttp.ClientSession, chain: Chain
    ) -> None:
        """Regional accepts and stays silent: after its per-try timeout, central answers."""
        async with FaultProxy("127.0.0.1", chain.regional.server.port) as proxy:
            proxy.faults.blackhole = True
            regional = cluster(
                "regional",
                "regional",
                proxy.url,
                models=["color_classifier_large", "hotspot_detector"],
                health_check={"enabled": False},
                request_timeout_ms=300,
                retry={"max_attempts": 1},
            )
            edge = RouterThread(
                site(
                    "edge",
                    chain.edge_repo,
                    [regional, cluster("central", "central", chain.central.url)],
                )
            )
            await asyncio.to_thread(edge.start)
            try:
                path = "/v2/models/color_classifier_large/infer"
                status, headers, doc = await post(http, edge.url + path, rgb_body(RED))
                assert status == 200
                assert doc["model_name"] == "color_classifier_large"
                assert headers["X-Served-By-Tier"] == "central"
                reasons = headers["X-Route-Reason"]
                assert reasons == "failed:regional:upstream_timeout,fallback:central>local"
                assert proxy.connections >= 1
                # Only regional holds hotspot_detector: nothing to fall back to.
                path = "/v2/models/hotspot_detector/infer"
                status, headers, doc = await post(http, edge.url + path, rgb_body(RED))
                assert status == 504
                assert headers["X-Route-Reason"] == "failed:regional:upstream_timeout"
                assert "no answer within" in doc["error"]
            finally:
                await asyncio.to_thread(edge.stop)

    async def test_stopped_regional_falls_back(
        self, http: aiohttp.ClientSession, chain: Chain, repos: dict[str, Path]
    ) -> None:
        """A regional router that was shut down: the edge falls back to central."""
        regional = RouterThread(
            site("regional", repos["regional"], [cluster("central", "central", chain.central.url)])
        )
        await asyncio.to_thread(regional.start)
        stopped = False
        upstreams = [
            cluster(
                "regional",
                "regional",
                regional.url,
                health_check={"enabled": False},
                retry={"max_attempts": 1},
            ),
            cluster("central", "central", chain.central.url),
        ]
        edge = RouterThread(site("edge", chain.edge_repo, upstreams))
        await asyncio.to_thread(edge.start)
        try:
            path = "/v2/models/color_classifier_large/infer"
            status, headers, _ = await post(http, edge.url + path, rgb_body(RED))
            assert headers["X-Route-Reason"] == "forward:regional>forward:central>local"
            await asyncio.to_thread(regional.stop)
            stopped = True
            status, headers, doc = await post(http, edge.url + path, rgb_body(RED))
            assert status == 200
            assert doc["model_name"] == "color_classifier_large"
            assert headers["X-Served-By-Tier"] == "central"
            reasons = headers["X-Route-Reason"]
            assert re.fullmatch(r"failed:regional:upstream_\w+,fallback:central>local", reasons)
        finally:
            await asyncio.to_thread(edge.stop)
            if not stopped:
                await asyncio.to_thread(regional.stop)

    @pytest.mark.parametrize("central", ["gone", "failing"])
    async def test_regional_failing_for_central_is_not_ejected(
        self, http: aiohttp.ClientSession, repos: dict[str, Path], central: str
    ) -> None:
        """Regional answers 503 offline (its central is gone) or 502 (central answers 500):
        that is regional working, so the edge keeps sending it what regional serves itself."""
        failing = FakeUpstream(name="central", behaviour=Behaviour(fail_status=500))
        with AppThread(failing.app) as failing_server:
            url = "http://127.0.0.1:9" if central == "gone" else failing_server.url
            behind = cluster("central", "central", url, models=["gpt-test"])
            regional = RouterThread(site("regional", repos["regional"], [behind]))
            await asyncio.to_thread(regional.start)
            for _ in range(100):  # its health checks find central gone: then it says offline
                async with http.get(regional.url + "/v2") as resp:
                    if (
                        central == "failing"
                        or (await resp.json())["connectivity"]["central"] == "offline"
                    ):
                        break
                await asyncio.sleep(0.05)
            through = cluster(
                "regional",
                "regional",
                regional.url,
                models=["gpt-test", "hotspot_detector"],
                retry={"max_attempts": 1},
            )
            edge = RouterThread(site("edge", repos["edge"], [through]))
            await asyncio.to_thread(edge.start)
            chat = {"model": "gpt-test", "messages": MESSAGES}
            frame = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32"}]}
            frame["inputs"][0]["data"] = [30.0] * 64
            try:
                for _ in range(8):
                    status, headers, _ = await post(http, edge.url + "/v1/chat/completions", chat)
                    assert status in (502, 503)
                    # Why regional refused follows `>`, as a chained router's reasons do.
                    ours, theirs = headers["X-Route-Reason"].split(">")
                    assert ours.endswith("failed:regional:upstream_status")
                    assert theirs in ("unhealthy:central,offline", "failed:central:upstream_status")
                status, headers, _ = await post(
                    http, edge.url + "/v2/models/hotspot_detector/infer", frame
                )
            finally:
                await asyncio.to_thread(edge.stop)
                await asyncio.to_thread(regional.stop)
        assert status == 200
        assert headers["X-Route-Reason"] == "forward:regional>local"

    async def test_regional_offline_behind_it_is_not_retried(
        self, http: aiohttp.ClientSession, repos: dict[str, Path]
    ) -> None:
        """Regional answers 503 offline (Retry-After: 5) for a model only its gone central
        holds: the edge passes that on at once instead of asking regional again after 5 s."""
        behind = cluster(
            "central", "central", "http://127.0.0.1:9", models=["color_classifier_large"]
        )
        regional = start_hop(site("regional", repos["regional"], [behind]))
        try:
            for _ in range(100):  # its health checks find central gone: then it says offline
                async with http.get(regional.url + "/v2") as resp:
                    if (await resp.json())["connectivity"]["central"] == "offline":
                        break
                await asyncio.sleep(0.05)
            through = cluster(
                "regional", "regional", regional.url, models=["color_classifier_large"]
            )
            edge = RouterThread(site("edge", repos["edge"], [through]))
            await asyncio.to_thread(edge.start)
            path = "/v2/models/color_classifier_large/infer"
            try:
                status, headers, _ = await post(
                    http, edge.url + path, rgb_body(RED), **{"X-Latency-Budget-Ms": "6000"}
                )
            finally:
                await asyncio.to_thread(edge.stop)
        finally:
            await asyncio.to_thread(regional.server.stop)
        assert status == 503
        assert headers["X-Route-Reason"].endswith(">unhealthy:central,offline")
        assert headers["Retry-After"] == "5"
        assert len([r for r in regional.received if r.path == path]) == 1


class TestClientsThroughTheChain:
    """The real clients, unmodified, against the edge of the chain."""

    def test_openai_chat(self, chain: Chain) -> None:
        """A chat completion travels edge -> regional -> central -> the LLM and back."""
        with openai.OpenAI(
            base_url=chain.edge.url + "/v1", api_key="sk-chain", max_retries=0, timeout=TIMEOUT_S
        ) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-test", messages=MESSAGES
            )
        completion = raw.parse()
        assert completion.choices[0].message.content == "llm heard: how far is the central tier"
        assert raw.headers["X-Served-By-Tier"] == "central"
        assert raw.headers["X-Route-Reason"] == "forward:regional>forward:central>forward:llm"
        assert chain.llm.received[-1].headers["X-Layer-Router-Hops"] == "3"

    def test_central_sees_tokens_not_regional_pseudonyms(self, chain: Chain) -> None:
        """Regional gets the e-mail as a pseudonym and central, behind it, as a token (central's
        view, as if the edge had sent it there directly); the caller gets regional's view."""
        with openai.OpenAI(
            base_url=chain.edge.url + "/v1", api_key="sk-chain", max_retries=0, timeout=TIMEOUT_S
        ) as client:
            completion = client.chat.completions.create(
                model="gpt-test",
                messages=[{"role": "user", "content": "mail jane.doe@example.com today"}],
            )
        at_regional = chain.regional.last("/v1/chat/completions").body.decode()
        pseudonym = re.search(r"<EMAIL#[a-p]{12}>", at_regional)
        assert pseudonym is not None
        assert "jane.doe" not in at_regional
        at_llm = chain.llm.received[-1].body.decode()
        assert "mail <EMAIL_1> today" in at_llm
        assert "<EMAIL#" not in at_llm
        reply = completion.choices[0].message.content
        assert reply == f"llm heard: mail {pseudonym.group()} today"

    def test_openai_stream(self, chain: Chain) -> None:
        """A stream passes three routers with its chunks and usage intact."""
        with openai.OpenAI(
            base_url=chain.edge.url + "/v1", api_key="sk-chain", max_retries=0, timeout=TIMEOUT_S
        ) as client:
            stream = client.chat.completions.create(
                model="gpt-test",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "llm heard: how far is the central tier"
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None

    def test_openai_models_list(self, chain: Chain) -> None:
        """The edge lists its own model and what lies behind each upstream."""
        with openai.OpenAI(
            base_url=chain.edge.url + "/v1", api_key="sk-chain", max_retries=0, timeout=TIMEOUT_S
        ) as client:
            listed = {(m.id, (m.model_extra or {}).get("tier")) for m in client.models.list()}
        assert ("color_classifier", "edge") in listed
        assert ("hotspot_detector", "regional") in listed
        # Behind regional (as regional lists them) and straight from the central cluster.
        assert ("gpt-test", "central") in listed
        assert ("color_classifier_large", "central") in listed

    def test_listings_name_the_tier_behind_a_chained_router(
        self, triton: triton_http.InferenceServerClient, chain: Chain
    ) -> None:
        """A model regional only forwards to central is listed as central's, through the
        regional cluster too; regional's own model stays regional's. Each model is listed
        once, naming every route to it (regional first, the nearer cluster)."""
        with openai.OpenAI(
            base_url=chain.edge.url + "/v1", api_key="sk-chain", max_retries=0, timeout=TIMEOUT_S
        ) as client:
            models = client.models.list().data
        assert len({m.id for m in models}) == len(models)
        listed = {m.id: m.model_extra or {} for m in models}
        routes = {
            name: (extra.get("tier"), extra.get("tiers"), extra.get("served_by_all"))
            for name, extra in listed.items()
            if "regional" in extra.get("served_by_all", [])
        }
        assert routes == {
            "hotspot_detector": ("regional", ["regional"], ["regional"]),
            "color_classifier_large": ("central", ["central"], ["regional", "central"]),
            "gpt-test": ("central", ["central"], ["regional", "central"]),
        }
        index = triton.get_model_repository_index()
        assert len({(i["name"], i["version"]) for i in index}) == len(index)
        v2_via_regional = {
            i["name"]: (i["tier"], i["clusters"])
            for i in index
            if "regional" in i.get("clusters", [])
        }
        assert v2_via_regional["hotspot_detector"] == ("regional", ["regional"])
        assert v2_via_regional["color_classifier_large"] == ("central", ["regional", "central"])

    def test_tritonclient(
        self, triton: triton_http.InferenceServerClient, reference: Reference, chain: Chain
    ) -> None:
        """tritonclient reaches the large model at central, JSON and binary alike."""
        rows = np.array([[0.2, 0.9, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
        path = chain.central_repo / "color_classifier_large" / "1" / "model.onnx"
        expected = reference_probs(reference, path, rows.tolist())
        for binary in (False, True):
            tensor = triton_http.InferInput("rgb", [2, 3], "FP32")
            tensor.set_data_from_numpy(rows, binary_data=binary)
            outputs = [triton_http.InferRequestedOutput("probs", binary_data=binary)]
            result = triton.infer("color_classifier_large", [tensor], outputs=outputs)
            np.testing.assert_allclose(result.as_numpy("probs"), expected, rtol=1e-5, atol=1e-6)
        assert triton.is_model_ready("color_classifier_large")
        assert triton.get_model_metadata("color_classifier_large")["inputs"] == [
            {"name": "rgb", "datatype": "FP32", "shape": [-1, 3]}
        ]
