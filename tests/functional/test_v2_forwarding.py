"""KServe v2 forwarding through the real `tritonclient` (sync and asyncio): models this site
does not hold, or holds but marks heavy, are answered by an upstream tier, with tensors intact
and the remaining latency budget passed on.

The upstreams are a second, real layer-router serving the demo repository (regional) and a
FakeUpstream that records every byte it receives (central)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_aio
from _triton import demo_inputs, infer_inputs

from router.settings import Settings
from router.testing import (
    AppThread,
    FakeUpstream,
    Recorded,
    RouterThread,
    identity_model,
    write_repository,
)

TIMEOUT_S = 30.0
Reference = Callable[[Path], ort.InferenceSession]
OUTPUTS = {
    "color_classifier": ["probs"],
    "hotspot_detector": ["boxes", "scores", "detected", "heatmap"],
}


@dataclass
class Site:
    edge: RouterThread
    regional: RouterThread
    fake: FakeUpstream


def cluster(name: str, tier: str, url: str) -> dict[str, Any]:
    return {
        "name": name,
        "tier": tier,
        "protocols": ["kserve-v2"],
        "endpoints": [{"url": url}],
        "health_check": {"interval_s": 0.2, "timeout_s": 2.0},
        "retry": {"base_backoff_ms": 5, "max_backoff_ms": 20},
    }


@pytest.fixture(scope="module")
def site(edge_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """edge (color_classifier, marked heavy, and a local identity model) -> regional (the demo
    repository, a real layer-router) and central (a recording fake serving `echo_model`)."""
    repo = tmp_path_factory.mktemp("edge-repo")
    shutil.copytree(edge_models / "color_classifier", repo / "color_classifier")
    write_repository(repo, {"identity": {1: identity_model("FP32")}})
    fake = FakeUpstream(name="fake-central", models=(), v2_models=("echo_model",))
    regional_settings = Settings.model_validate(
        {
            "site": {"id": "regional-1", "tier": "regional"},
            "models": {"repository": edge_models, "inference_threads": 1},
        }
    )
    with AppThread(fake.app) as central, RouterThread(regional_settings) as regional:
        edge_settings = Settings.model_validate(
            {
                "site": {"id": "edge-1", "tier": "edge"},
                "models": {"repository": repo, "inference_threads": 1},
                "upstreams": [
                    cluster("regional", "regional", regional.url),
                    cluster("central", "central", central.url),
                ],
                "routing": {"models": {"color_classifier": {"heavy": True}}},
            }
        )
        with RouterThread(edge_settings) as edge:
            yield Site(edge, regional, fake)


@pytest.fixture
def triton(site: Site) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(
        site.edge.host_port, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S
    )
    yield client
    client.close()


@pytest.fixture
async def aio_triton(site: Site) -> AsyncIterator[triton_aio.InferenceServerClient]:
    async with triton_aio.InferenceServerClient(
        site.edge.host_port, conn_timeout=TIMEOUT_S
    ) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
        yield session


def requested(model: str, binary: bool) -> list[triton_http.InferRequestedOutput] | None:
    if binary:
        return None  # tritonclient then asks for binary outputs
    return [triton_http.InferRequestedOutput(name, binary_data=False) for name in OUTPUTS[model]]


def reference_outputs(
    reference: Reference, path: Path, feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    session = reference(path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def assert_matches(result: Any, expected: dict[str, np.ndarray], binary: bool) -> None:
    """Same tensors as onnxruntime's, in the encoding the client asked for."""
    outputs = result.get_response()["outputs"]
    assert sorted(o["name"] for o in outputs) == sorted(expected)
    for out in outputs:
        assert ("data" not in out) is binary
        got, want = result.as_numpy(out["name"]), expected[out["name"]]
        assert got.shape == want.shape
        assert got.dtype == want.dtype
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got, want)


def as_text(item: object) -> str:
    """A BYTES element as text: JSON outputs decode to str, binary ones to bytes."""
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def last_infer(fake: FakeUpstream) -> Recorded:
    return fake.requests_to("/v2/models/echo_model/infer")[-1]


def forwarded_header(record: Recorded) -> dict[str, Any]:
    """The JSON header of a v2 request as the upstream received it."""
    length = record.headers.get("Inference-Header-Content-Length")
    doc: dict[str, Any] = orjson.loads(record.body[: int(length)] if length else record.body)
    return doc


def stats_count(client: triton_http.InferenceServerClient, model: str, version: str) -> int:
    (entry,) = client.get_inference_statistics(model, version)["model_stats"]
    return int(entry["inference_count"])


class TestForwardedModel:
    """A model only the regional tier holds, through the edge."""

    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    @pytest.mark.parametrize("model", ["hotspot_detector", "color_classifier"])
    def test_sync_matches_onnxruntime(
        self,
        triton: triton_http.InferenceServerClient,
        reference: Reference,
        edge_models: Path,
        model: str,
        binary: bool,
    ) -> None:
        """The regional answer reaches the sync client intact: onnxruntime's own tensors."""
        feeds = demo_inputs(model, seed=3)
        result = triton.infer(
            model, infer_inputs(feeds, binary), model_version="1", outputs=requested(model, binary)
        )
        assert result.get_response()["model_name"] == model
        assert result.get_response()["model_version"] == "1"
        expected = reference_outputs(reference, edge_models / model / "1" / "model.onnx", feeds)
        assert_matches(result, expected, binary)

    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    async def test_aio_matches_onnxruntime(
        self,
        aio_triton: triton_aio.InferenceServerClient,
        reference: Reference,
        edge_models: Path,
        binary: bool,
    ) -> None:
        """The asyncio client gets the same, with a request id passed through both routers."""
        feeds = demo_inputs("hotspot_detector", seed=4)
        result = await aio_triton.infer(
            "hotspot_detector",
            infer_inputs(feeds, binary),
            outputs=requested("hotspot_detector", binary),
            request_id="frame-42",
        )
        assert result.get_response()["id"] == "frame-42"
        path = edge_models / "hotspot_detector" / "1" / "model.onnx"
        assert_matches(result, reference_outputs(reference, path, feeds), binary)

    async def test_answer_names_tier_and_reasons(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """The answer says the regional tier served it, and both routers' reasons."""
        body = {
            "inputs": [
                {"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [30.0] * 64}
            ]
        }
        url = site.edge.url + "/v2/models/hotspot_detector/infer"
        async with http.post(url, json=body, headers={"X-Request-Id": "trace-me-1"}) as resp:
            assert resp.status == 200
            doc = await resp.json()
            assert resp.headers["X-Served-By-Tier"] == "regional"
            assert resp.headers["X-Route-Reason"] == "forward:regional>local"
            assert resp.headers["X-Request-Id"] == "trace-me-1"
        assert doc["model_name"] == "hotspot_detector"
        assert doc["outputs"][2]["data"] == [False]

    def test_metadata_and_readiness_relayed(
        self, triton: triton_http.InferenceServerClient
    ) -> None:
        """Metadata and readiness of an upstream-only model come from the tier that has it."""
        meta = triton.get_model_metadata("hotspot_detector")
        assert meta["name"] == "hotspot_detector"
        assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, -1, -1]}]
        assert triton.is_model_ready("hotspot_detector")

    def test_config_and_stats_relayed(self, triton: triton_http.InferenceServerClient) -> None:
        """Triton's config and statistics of an upstream-only model come from the tier that
        has it too, not a 404 for a model the edge's own index and metadata list."""
        config = triton.get_model_config("hotspot_detector")
        assert config["name"] == "hotspot_detector"
        (entry,) = triton.get_inference_statistics("hotspot_detector", "1")["model_stats"]
        assert entry["name"] == "hotspot_detector"
        assert triton.get_inference_statistics("hotspot_detector")["model_stats"]

    def test_repository_index_lists_upstream_models(
        self, triton: triton_http.InferenceServerClient
    ) -> None:
        """The edge's index shows local models with its tier, upstream-only ones with theirs."""
        index = triton.get_model_repository_index()
        tiers = {(e["name"], e.get("tier")) for e in index}
        assert ("color_classifier", "edge") in tiers
        assert ("identity", "edge") in tiers
        assert ("hotspot_detector", "regional") in tiers
        assert ("echo_model", "central") in tiers


class TestHeavyModel:
    """`heavy: true` sends a model upstream even though it is loaded here."""

    def test_heavy_model_forwarded(
        self, triton: triton_http.InferenceServerClient, site: Site
    ) -> None:
        """color_classifier is answered by the regional tier; the edge's copy never runs."""
        regional = triton_http.InferenceServerClient(
            site.regional.host_port, network_timeout=TIMEOUT_S
        )
        try:
            edge_before = stats_count(triton, "color_classifier", "2")
            regional_before = stats_count(regional, "color_classifier", "2")
            feeds = {"rgb": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)}
            result = triton.infer("color_classifier", infer_inputs(feeds, binary=True))
            assert result.get_response()["model_version"] == "2"
            assert result.as_numpy("probs").argmax(axis=1).tolist() == [0, 5]  # red, blue
            assert stats_count(triton, "color_classifier", "2") == edge_before
            assert stats_count(regional, "color_classifier", "2") == regional_before + 2
        finally:
            regional.close()

    async def test_heavy_reason(self, http: aiohttp.ClientSession, site: Site) -> None:
        """The reason says why it left: heavy_model, then where it went."""
        body = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [0, 1, 0]}]}
        url = site.edge.url + "/v2/models/color_classifier/infer"
        async with http.post(url, json=body) as resp:
            assert resp.status == 200
            assert resp.headers["X-Route-Reason"] == "heavy_model,forward:regional>local"
            assert resp.headers["X-Served-By-Tier"] == "regional"

    async def test_light_local_model_stays(self, http: aiohttp.ClientSession, site: Site) -> None:
        """A local model that is not heavy is served here, upstreams untouched."""
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
        async with http.post(site.edge.url + "/v2/models/identity/infer", json=body) as resp:
            assert resp.status == 200
            doc = await resp.json()
            assert resp.headers["X-Route-Reason"] == "local"
            assert resp.headers["X-Served-By-Tier"] == "edge"
        assert doc["outputs"][0]["data"] == [1.0, 2.0]


@pytest.fixture(scope="module")
def broken_edge(
    site: Site, edge_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RouterThread]:
    """An edge whose own hotspot_detector is a broken file and which holds version 2 of
    color_classifier only, in front of the regional tier that serves both models whole."""
    color = edge_models / "color_classifier"
    repo = write_repository(
        tmp_path_factory.mktemp("broken-edge-repo"),
        {
            "hotspot_detector": {1: b"not onnx"},
            "color_classifier": {2: (color / "2" / "model.onnx").read_bytes()},
        },
        {"color_classifier": (color / "config.yaml").read_text()},
    )
    settings = Settings.model_validate(
        {
            "site": {"id": "edge-2", "tier": "edge"},
            "models": {"repository": repo, "inference_threads": 1},
            "upstreams": [cluster("regional", "regional", site.regional.url)],
        }
    )
    with RouterThread(settings) as edge:
        yield edge


class TestLocallyBrokenModel:
    """A model this site holds but could not load, which an upstream tier serves."""

    def test_metadata_and_readiness_follow_inference(
        self, broken_edge: RouterThread, edge_models: Path, reference: Reference
    ) -> None:
        """Inference falls back to the regional tier (local_not_ready), so readiness says
        ready and the metadata lists the model's tensors, as for an upstream-only model,
        instead of 503 and no inputs for a model every request gets answered for."""
        client = triton_http.InferenceServerClient(broken_edge.host_port, network_timeout=TIMEOUT_S)
        try:
            feeds = demo_inputs("hotspot_detector", seed=6)
            result = client.infer("hotspot_detector", infer_inputs(feeds, True))
            path = edge_models / "hotspot_detector" / "1" / "model.onnx"
            assert_matches(result, reference_outputs(reference, path, feeds), True)
            assert client.is_model_ready("hotspot_detector")
            meta = client.get_model_metadata("hotspot_detector")
            assert meta["inputs"] == [
                {"name": "image", "datatype": "FP32", "shape": [-1, 1, -1, -1]}
            ]
            assert client.get_model_config("hotspot_detector")["input"]
        finally:
            client.close()

    async def test_a_version_only_upstream_has(
        self, broken_edge: RouterThread, http: aiohttp.ClientSession
    ) -> None:
        """color_classifier version 1, which only the regional tier holds, is served from
        there (the edge's version 2 answers requests naming none), its metadata and
        readiness too, instead of the edge's 404 'no version'; a version nobody has is 404."""
        body = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, 0]}]}
        base = f"{broken_edge.url}/v2/models/color_classifier"
        async with http.post(f"{base}/versions/1/infer", json=body) as resp:
            assert resp.status == 200
            assert (await resp.json())["model_version"] == "1"
            assert resp.headers["X-Route-Reason"] == "local_not_ready,forward:regional>local"
        async with http.post(f"{base}/infer", json=body) as resp:
            assert (await resp.json())["model_version"] == "2"
            assert resp.headers["X-Route-Reason"] == "local"
        async with http.get(f"{base}/versions/1") as resp:
            assert resp.status == 200
            assert (await resp.json())["parameters"]["version"] == "1"
        async with http.get(f"{base}/versions/1/ready") as resp:
            assert resp.status == 200
        async with http.post(f"{base}/versions/9/infer", json=body) as resp:
            assert resp.status == 404

    async def test_index_lists_a_version_only_upstream_has(
        self, broken_edge: RouterThread, http: aiohttp.ClientSession
    ) -> None:
        """The edge's index lists color_classifier version 2 as its own and version 1, which
        only the regional tier holds (and requests naming it reach), through regional, each
        once; the broken local hotspot_detector version stays the edge's own entry, and
        under the ready filter is listed through regional, where its requests go."""
        async with http.post(f"{broken_edge.url}/v2/repository/index") as resp:
            index = await resp.json()
        entries = [(e["name"], e.get("version"), e["state"], e["tier"]) for e in index]
        assert sorted(e for e in entries if e[0] == "color_classifier") == [
            ("color_classifier", "1", "READY", "regional"),
            ("color_classifier", "2", "READY", "edge"),
        ]
        assert [e for e in entries if e[0] == "hotspot_detector"] == [
            ("hotspot_detector", "1", "UNAVAILABLE", "edge")
        ]
        # Asked for ready versions, the broken one is listed by the route its requests take.
        async with http.post(f"{broken_edge.url}/v2/repository/index", json={"ready": True}) as r:
            ready = [(e["name"], e.get("version"), e["tier"]) for e in await r.json()]
        assert [e for e in ready if e[0] == "hotspot_detector"] == [
            ("hotspot_detector", "1", "regional")
        ]


class TestWhatTheUpstreamReceives:
    """The forwarded v2 request as recorded by the fake central tier."""

    def test_json_tensors_arrive_intact(
        self, triton: triton_http.InferenceServerClient, site: Site
    ) -> None:
        """JSON tensors arrive as sent and the fake's echo comes back through the edge."""
        data = np.arange(6, dtype=np.int32).reshape(2, 3)
        words = np.array([b"caf\xc3\xa9", b""], dtype=np.object_)
        inputs = infer_inputs({"x": data}, binary=False)
        word_input = triton_http.InferInput("w", [2], "BYTES")
        word_input.set_data_from_numpy(words, binary_data=False)
        outputs = [
            triton_http.InferRequestedOutput(name, binary_data=False)
            for name in ("served_by", "echo_x", "echo_w")
        ]
        result = triton.infer("echo_model", [*inputs, word_input], outputs=outputs)
        np.testing.assert_array_equal(result.as_numpy("echo_x"), data)
        assert [as_text(item) for item in result.as_numpy("served_by")] == ["fake-central"]
        header = forwarded_header(last_infer(site.fake))
        assert header["inputs"][0] == {
            "name": "x",
            "shape": [2, 3],
            "datatype": "INT32",
            "data": [0, 1, 2, 3, 4, 5],
        }
        assert header["inputs"][1]["data"] == ["café", ""]

    def test_binary_tensors_arrive_intact(
        self, triton: triton_http.InferenceServerClient, site: Site
    ) -> None:
        """Binary tensors follow the re-encoded header byte for byte, its length declared."""
        rng = np.random.default_rng(7)
        a = rng.random((3, 5), dtype=np.float32)
        b = rng.integers(-(2**40), 2**40, size=(4,), dtype=np.int64)
        before = len(site.fake.received)
        triton.infer("echo_model", infer_inputs({"a": a, "b": b}, binary=True))
        assert len(site.fake.received) == before + 1  # one message, no retry needed
        record = last_infer(site.fake)
        length = int(record.headers["Inference-Header-Content-Length"])
        header = orjson.loads(record.body[:length])
        assert [t["parameters"]["binary_data_size"] for t in header["inputs"]] == [60, 32]
        assert record.body[length:] == a.tobytes() + b.tobytes()
        assert record.headers["Content-Type"] == "application/octet-stream"
        assert int(record.headers["Content-Length"]) == len(record.body)

    def test_budget_header_carried_on(
        self, triton: triton_http.InferenceServerClient, site: Site
    ) -> None:
        """X-Latency-Budget-Ms upstream is what remains of the client's, and parameters.timeout
        carries the same remaining budget in microseconds."""
        feeds = {"x": np.ones((1, 2), dtype=np.float32)}
        triton.infer(
            "echo_model", infer_inputs(feeds, False), headers={"X-Latency-Budget-Ms": "4000"}
        )
        record = last_infer(site.fake)
        left_ms = int(record.headers["X-Latency-Budget-Ms"])
        assert 0 < left_ms <= 4000
        assert forwarded_header(record)["parameters"]["timeout"] == left_ms * 1000

    def test_client_timeout_parameter_tightens_budget(
        self, triton: triton_http.InferenceServerClient, site: Site
    ) -> None:
        """Triton's per-request `timeout` (µs) tightens a looser header budget, and is
        re-encoded with what remains of it."""
        feeds = {"x": np.ones((1, 2), dtype=np.float32)}
        triton.infer(
            "echo_model",
            infer_inputs(feeds, True),
            timeout=1_500_000,
            headers={"X-Latency-Budget-Ms": "60000"},
        )
        record = last_infer(site.fake)
        left_ms = int(record.headers["X-Latency-Budget-Ms"])
        assert 0 < left_ms <= 1500
        assert forwarded_header(record)["parameters"]["timeout"] == left_ms * 1000

    def test_default_budget_without_client_budget(
        self, triton: triton_http.InferenceServerClient, site: Site
    ) -> None:
        """A request stating no budget is forwarded with what remains of the route default."""
        triton.infer("echo_model", infer_inputs({"x": np.ones((1, 1), np.float32)}, False))
        record = last_infer(site.fake)
        default_ms = site.edge.settings.routing.kserve_v2_budget_ms
        assert 0 < int(record.headers["X-Latency-Budget-Ms"]) <= default_ms

    def test_json_content_type_set(
        self, triton: triton_http.InferenceServerClient, site: Site
    ) -> None:
        """The sync tritonclient sends no Content-Type; the forwarded JSON body carries one."""
        triton.infer("echo_model", infer_inputs({"x": np.ones((1, 1), np.float32)}, False))
        record = last_infer(site.fake)
        assert record.headers["Content-Type"] == "application/json"
        assert "Inference-Header-Content-Length" not in record.headers
        assert int(record.headers["Content-Length"]) == len(record.body)


class TestBadRequestBeforeBudget:
    """For a model only an upstream serves, a structurally malformed request is a 400 even
    when no tier can meet its budget, and nothing is sent upstream."""

    async def test_malformed_tensor_with_an_unmeetable_timeout(
        self, site: Site, http: aiohttp.ClientSession
    ) -> None:
        """Six elements declared, three sent, a 1 µs timeout: 400 naming the input, not 504."""
        tensor = {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1.0, 2.0, 3.0]}
        body = orjson.dumps({"inputs": [tensor], "parameters": {"timeout": 1}})
        before = len(site.fake.received)
        url = f"{site.edge.url}/v2/models/echo_model/infer"
        async with http.post(url, data=body) as resp:
            assert resp.status == 400, await resp.read()
            assert "'x'" in (await resp.json())["error"]
        assert len(site.fake.received) == before

    async def test_well_formed_with_an_unmeetable_timeout_is_504(
        self, site: Site, http: aiohttp.ClientSession
    ) -> None:
        """The same request, well formed: still 504 budget_unmeetable."""
        tensor = {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}
        body = orjson.dumps({"inputs": [tensor], "parameters": {"timeout": 1}})
        url = f"{site.edge.url}/v2/models/echo_model/infer"
        async with http.post(url, data=body) as resp:
            assert resp.status == 504, await resp.read()
            assert "latency budget" in (await resp.json())["error"]
