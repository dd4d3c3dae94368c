"""The KServe v2 face against the real tritonclient (sync and asyncio) on a loopback server.

Every inference result is checked against a plain onnxruntime session run on the same inputs.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
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
from tritonclient.utils import InferenceServerException

import router
from router.api.state import STATUS
from router.testing import (
    DATATYPES,
    RouterThread,
    identity_model,
    refusing_provider_builder,
    serve_in_thread,
    settings_for,
    slow_session_builder,
    write_repository,
)

TIMEOUT_S = 30.0
LABELS = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "white", "black", "gray"]
DEMO_VERSIONS = [("color_classifier", "1"), ("color_classifier", "2"), ("hotspot_detector", "1")]
OUTPUTS = {
    "color_classifier": ["probs"],
    "hotspot_detector": ["boxes", "scores", "detected", "heatmap"],
}
Reference = Callable[[Path], ort.InferenceSession]


def _loop_running() -> bool:
    """Whether the calling thread runs an event loop (a worker thread runs none)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _text(item: object) -> str:
    """A BYTES element as text: JSON outputs decode to str, binary ones to bytes."""
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def json_outputs(names: list[str]) -> list[triton_http.InferRequestedOutput]:
    return [triton_http.InferRequestedOutput(name, binary_data=False) for name in names]


def assert_matches(
    result: triton_http.InferResult, expected: dict[str, np.ndarray], binary: bool
) -> None:
    """Same names, datatypes, shapes and values (within float rounding) as onnxruntime's."""
    outputs = result.get_response()["outputs"]
    assert [o["name"] for o in outputs] == list(expected)
    for out in outputs:
        want = expected[out["name"]]
        assert out["datatype"] == triton_http.np_to_triton_dtype(want.dtype)
        assert ("data" not in out) is binary
        got = result.as_numpy(out["name"])
        assert got.shape == want.shape
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got, want)


def run_reference(
    reference: Reference, path: Path, feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    session = reference(path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def stats_of(client: triton_http.InferenceServerClient, model: str, version: str) -> dict[str, Any]:
    (entry,) = client.get_inference_statistics(model, version)["model_stats"]
    return entry


class TestServerEndpoints:
    """Health, metadata, repository, config and statistics endpoints."""

    def test_live_and_ready(self, triton: triton_http.InferenceServerClient) -> None:
        """A server whose models all loaded is live and ready."""
        assert triton.is_server_live()
        assert triton.is_server_ready()

    def test_server_metadata(self, triton: triton_http.InferenceServerClient) -> None:
        """Server metadata names the program, its version and the extensions it speaks."""
        meta = triton.get_server_metadata()
        assert meta["name"] == "layer-router"
        assert meta["version"] == router.__version__
        assert {"binary_tensor_data", "classification", "model_repository", "statistics"} <= set(
            meta["extensions"]
        )
        assert (meta["site"], meta["tier"]) == ("edge-local", "edge")

    @pytest.mark.parametrize(("version", "served"), [("", "2"), ("1", "1"), ("2", "2")])
    def test_color_classifier_metadata(
        self, triton: triton_http.InferenceServerClient, version: str, served: str
    ) -> None:
        """Model metadata lists every version, the tensors with -1 for the batch dimension and
        the facts of the version asked for (the highest by default)."""
        meta = triton.get_model_metadata("color_classifier", version)
        assert meta["name"] == "color_classifier"
        assert meta["versions"] == ["1", "2"]
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "rgb", "datatype": "FP32", "shape": [-1, 3]}]
        assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, 10]}]
        params = meta["parameters"]
        assert params["version"] == served
        assert params["state"] == "READY"
        assert params["execution_provider"] == "CPUExecutionProvider"
        assert len(params["sha256"]) == 64

    def test_hotspot_metadata(self, triton: triton_http.InferenceServerClient) -> None:
        """Every dynamic dimension of hotspot_detector shows as -1; BOOL outputs keep their type."""
        meta = triton.get_model_metadata("hotspot_detector")
        assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, -1, -1]}]
        assert meta["outputs"] == [
            {"name": "boxes", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "scores", "datatype": "FP32", "shape": [-1]},
            {"name": "detected", "datatype": "BOOL", "shape": [-1]},
            {"name": "heatmap", "datatype": "FP32", "shape": [-1, 1, -1, -1]},
        ]

    @pytest.mark.parametrize(("model", "version"), [*DEMO_VERSIONS, ("color_classifier", "")])
    def test_model_ready(
        self, triton: triton_http.InferenceServerClient, model: str, version: str
    ) -> None:
        """Each loaded version, and the default one, reports ready."""
        assert triton.is_model_ready(model, version)

    def test_repository_index(self, triton: triton_http.InferenceServerClient) -> None:
        """The repository index lists every version as READY."""
        index = triton.get_model_repository_index()
        assert [(e["name"], e["version"], e["state"]) for e in index] == [
            (model, version, "READY") for model, version in DEMO_VERSIONS
        ]

    async def test_repository_index_ready_only(
        self, http: aiohttp.ClientSession, demo_server: RouterThread
    ) -> None:
        """`{"ready": true}` filters the index to ready versions (all of them here)."""
        url = f"{demo_server.url}/v2/repository/index"
        async with http.post(url, json={"ready": True}) as resp:
            assert resp.status == 200
            index = await resp.json()
        assert {(e["name"], e["version"]) for e in index} == set(DEMO_VERSIONS)

    def test_model_config(self, triton: triton_http.InferenceServerClient) -> None:
        """The config endpoint shows config.yaml as the router understood it."""
        config = triton.get_model_config("color_classifier", "1")
        assert config["name"] == "color_classifier"
        assert config["loaded"]["version"] == "1"
        assert len(config["loaded"]["sha256"]) == 64
        assert config["sha256"] == {}  # the pins from config.yaml stay visible, apart
        assert config["labels"] == LABELS
        assert config["label_output"] == "probs"
        assert config["max_batch_size"] == 64
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 200

    def test_model_config_in_triton_terms(self, triton: triton_http.InferenceServerClient) -> None:
        """The config also states inputs and outputs as Triton's model config does (TYPE_
        names, dims without the batch dimension), which tools such as perf_analyzer and
        Triton's image_client example read."""
        config = triton.get_model_config("color_classifier")
        assert config["platform"] == "onnxruntime_onnx"
        assert config["backend"] == "onnxruntime"
        assert config["input"] == [
            {"name": "rgb", "data_type": "TYPE_FP32", "dims": [3], "format": "FORMAT_NONE"}
        ]
        assert config["output"] == [{"name": "probs", "data_type": "TYPE_FP32", "dims": [10]}]

    def test_stats_count_inferences(
        self, triton: triton_http.InferenceServerClient, edge_models: Path
    ) -> None:
        """Statistics count served rows and successful requests after some inferences."""
        before = stats_of(triton, "hotspot_detector", "1")
        feeds = demo_inputs("hotspot_detector")
        for _ in range(3):
            triton.infer("hotspot_detector", infer_inputs(feeds, binary=True))
        after = stats_of(triton, "hotspot_detector", "1")
        assert after["inference_count"] - before["inference_count"] == 3 * 2
        assert 1 <= after["execution_count"] - before["execution_count"] <= 3
        success = after["inference_stats"]["success"]["count"]
        assert success - before["inference_stats"]["success"]["count"] == 3
        assert after["last_inference"] > 0
        assert any(b["batch_size"] >= 2 for b in after["batch_stats"])

    def test_all_stats(self, triton: triton_http.InferenceServerClient) -> None:
        """Statistics without a model name cover every version of every model."""
        stats = triton.get_inference_statistics()["model_stats"]
        assert {(s["name"], s["version"]) for s in stats} == set(DEMO_VERSIONS)

    def test_stats_have_every_field_perf_analyzer_reads(
        self, triton: triton_http.InferenceServerClient
    ) -> None:
        """Each entry has every count and duration Triton's perf_analyzer indexes without
        checking (cache_hit and cache_miss included): a missing one aborts it."""
        for entry in triton.get_inference_statistics()["model_stats"]:
            phases = entry["inference_stats"]
            for phase in PERF_ANALYZER_PHASES:
                assert set(phases[phase]) == {"count", "ns"}, phase
            assert isinstance(entry["inference_count"], int)
            assert isinstance(entry["execution_count"], int)


PERF_ANALYZER_PHASES = (
    "success",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)


class TestDrainingFlag:
    """While the server drains, readiness says no and liveness still says yes."""

    def test_probes_while_draining(self, edge_models: Path) -> None:
        """With the draining flag set, server and model readiness are 503, liveness 200."""
        with serve_in_thread(settings_for(edge_models, inference_threads=1)) as server:
            assert server.app is not None
            status = server.app[STATUS]
            client = triton_http.InferenceServerClient(server.host_port, network_timeout=TIMEOUT_S)
            try:
                assert client.is_server_ready()
                server.call(setattr, status, "draining", True)
                assert not client.is_server_ready()
                assert not client.is_model_ready("color_classifier")
                assert client.is_server_live()
            finally:
                client.close()


class TestInference:
    """Inference on the demo models, JSON and binary, compared with onnxruntime."""

    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    @pytest.mark.parametrize(("model", "version"), DEMO_VERSIONS)
    def test_sync_matches_onnxruntime(
        self,
        triton: triton_http.InferenceServerClient,
        reference: Reference,
        edge_models: Path,
        model: str,
        version: str,
        binary: bool,
    ) -> None:
        """The sync client gets onnxruntime's outputs, in JSON or binary tensors."""
        feeds = demo_inputs(model, seed=1)
        outputs = None if binary else json_outputs(OUTPUTS[model])
        result = triton.infer(
            model, infer_inputs(feeds, binary), model_version=version, outputs=outputs
        )
        assert result.get_response()["model_version"] == version
        expected = run_reference(reference, edge_models / model / version / "model.onnx", feeds)
        assert_matches(result, expected, binary)

    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    @pytest.mark.parametrize(("model", "version"), DEMO_VERSIONS)
    async def test_aio_matches_onnxruntime(
        self,
        aio_triton: triton_aio.InferenceServerClient,
        reference: Reference,
        edge_models: Path,
        model: str,
        version: str,
        binary: bool,
    ) -> None:
        """The asyncio client (which labels binary bodies octet-stream) gets the same outputs."""
        feeds = demo_inputs(model, seed=2)
        outputs = None if binary else json_outputs(OUTPUTS[model])
        result = await aio_triton.infer(
            model, infer_inputs(feeds, binary), model_version=version, outputs=outputs
        )
        expected = run_reference(reference, edge_models / model / version / "model.onnx", feeds)
        assert_matches(result, expected, binary)

    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    def test_subset_of_outputs(
        self,
        triton: triton_http.InferenceServerClient,
        reference: Reference,
        edge_models: Path,
        binary: bool,
    ) -> None:
        """Only the requested outputs come back, in the order asked for."""
        feeds = demo_inputs("hotspot_detector", seed=3)
        wanted = ["detected", "scores"]
        outputs = [triton_http.InferRequestedOutput(n, binary_data=binary) for n in wanted]
        result = triton.infer("hotspot_detector", infer_inputs(feeds, binary), outputs=outputs)
        full = run_reference(reference, edge_models / "hotspot_detector/1/model.onnx", feeds)
        assert_matches(result, {name: full[name] for name in wanted}, binary)
        assert result.as_numpy("detected").tolist() == [True, False]

    def test_request_id_is_echoed(self, triton: triton_http.InferenceServerClient) -> None:
        """The response carries the request's id; without one it carries none."""
        feeds = demo_inputs("color_classifier")
        result = triton.infer("color_classifier", infer_inputs(feeds, True), request_id="req-42")
        assert result.get_response()["id"] == "req-42"
        plain = triton.infer("color_classifier", infer_inputs(feeds, True))
        assert "id" not in plain.get_response()

    async def test_aio_request_id_is_echoed(
        self, aio_triton: triton_aio.InferenceServerClient
    ) -> None:
        """The asyncio client sees its request id echoed too."""
        feeds = demo_inputs("color_classifier")
        inputs = infer_inputs(feeds, False)
        result = await aio_triton.infer("color_classifier", inputs, request_id="aio-7")
        assert result.get_response()["id"] == "aio-7"

    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    def test_classification_top3(
        self,
        triton: triton_http.InferenceServerClient,
        reference: Reference,
        edge_models: Path,
        binary: bool,
    ) -> None:
        """class_count=3 answers "score:index:label" strings, best first, per row."""
        rgb = np.array([[1, 0, 0], [0, 0, 1], [0.5, 0.5, 0.5]], dtype=np.float32)
        requested = triton_http.InferRequestedOutput("probs", binary_data=binary, class_count=3)
        result = triton.infer(
            "color_classifier",
            infer_inputs({"rgb": rgb}, binary),
            model_version="1",
            outputs=[requested],
        )
        out = result.get_output("probs")
        assert (out["datatype"], out["shape"]) == ("BYTES", [3, 3])
        (probs,) = reference(edge_models / "color_classifier/1/model.onnx").run(None, {"rgb": rgb})
        for row, entries in zip(probs, result.as_numpy("probs"), strict=True):
            top = np.argsort(-row, kind="stable")[:3]
            parsed = [_text(e).split(":") for e in entries]
            assert [int(index) for _, index, _ in parsed] == top.tolist()
            assert [label for _, _, label in parsed] == [LABELS[i] for i in top]
            np.testing.assert_allclose([float(s) for s, _, _ in parsed], row[top], atol=1e-6)
        assert _text(result.as_numpy("probs")[0, 0]).endswith(":0:red")

    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    def test_classification_of_a_batched_one_score_output(
        self,
        triton: triton_http.InferenceServerClient,
        reference: Reference,
        edge_models: Path,
        binary: bool,
    ) -> None:
        """class_count on a batching model's [N] output ranks each batch entry on its own, as
        Triton does (shape [N, 1]), instead of ranking the frames against each other."""
        feeds = demo_inputs("hotspot_detector", seed=5)
        requested = triton_http.InferRequestedOutput("scores", binary_data=binary, class_count=2)
        result = triton.infer("hotspot_detector", infer_inputs(feeds, binary), outputs=[requested])
        out = result.get_output("scores")
        assert (out["datatype"], out["shape"]) == ("BYTES", [2, 1])
        full = run_reference(reference, edge_models / "hotspot_detector/1/model.onnx", feeds)
        entries = [_text(e).split(":") for e in result.as_numpy("scores").ravel()]
        assert [index for _, index in entries] == ["0", "0"]
        np.testing.assert_allclose([float(s) for s, _ in entries], full["scores"], atol=1e-5)

    def test_an_output_asked_for_twice(self, triton: triton_http.InferenceServerClient) -> None:
        """probs asked for twice (classified, then raw) comes back once, as first asked, as
        Triton answers; two entries of one name made tritonclient read one's bytes as the
        other's and fail."""
        rgb = np.array([[1, 0, 0]], dtype=np.float32)
        outputs = [
            triton_http.InferRequestedOutput("probs", binary_data=True, class_count=2),
            triton_http.InferRequestedOutput("probs", binary_data=True),
        ]
        result = triton.infer("color_classifier", infer_inputs({"rgb": rgb}, True), outputs=outputs)
        assert [o["name"] for o in result.get_response()["outputs"]] == ["probs"]
        assert _text(result.as_numpy("probs")[0, 0]).endswith(":0:red")

    def test_default_version_is_highest(
        self, triton: triton_http.InferenceServerClient, reference: Reference, edge_models: Path
    ) -> None:
        """Without a version the highest one answers; model_version="1" pins version 1."""
        feeds = demo_inputs("color_classifier", seed=4)
        default = triton.infer("color_classifier", infer_inputs(feeds, True))
        pinned = triton.infer("color_classifier", infer_inputs(feeds, True), model_version="1")
        assert default.get_response()["model_version"] == "2"
        assert pinned.get_response()["model_version"] == "1"
        v1 = run_reference(reference, edge_models / "color_classifier/1/model.onnx", feeds)
        v2 = run_reference(reference, edge_models / "color_classifier/2/model.onnx", feeds)
        assert_matches(default, v2, binary=True)
        assert_matches(pinned, v1, binary=True)
        assert not np.allclose(v1["probs"], v2["probs"])

    async def test_body_without_content_type_is_json(
        self, http: aiohttp.ClientSession, demo_server: RouterThread
    ) -> None:
        """A body with neither Content-Type nor Inference-Header-Content-Length is read as JSON."""
        doc = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 1]}]}
        async with http.post(
            f"{demo_server.url}/v2/models/color_classifier/infer",
            data=orjson.dumps(doc),
            skip_auto_headers=["Content-Type"],
        ) as resp:
            assert "Content-Type" not in resp.request_info.headers
            assert resp.status == 200
            assert resp.content_type == "application/json"
            reply = await resp.json()
        (probs,) = reply["outputs"]
        assert LABELS[int(np.argmax(probs["data"]))] == "blue"


class TestCompression:
    """gzip and deflate on request and response bodies."""

    @pytest.fixture
    def feeds(self) -> dict[str, np.ndarray]:
        # 8 frames of 64x64: even the binary response passes the router's 1 KiB threshold.
        frames = 20.0 + 50.0 * np.random.default_rng(8).random((8, 1, 64, 64), dtype=np.float32)
        return {"image": frames.astype(np.float32)}

    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    @pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
    @pytest.mark.parametrize("direction", ["request", "response"])
    def test_compression(
        self,
        triton: triton_http.InferenceServerClient,
        reference: Reference,
        edge_models: Path,
        feeds: dict[str, np.ndarray],
        algorithm: str,
        binary: bool,
        direction: str,
    ) -> None:
        """A compressed request body is inflated before decoding (binary offsets included), and
        asking for a compressed response still yields onnxruntime's outputs."""
        outputs = None if binary else json_outputs(OUTPUTS["hotspot_detector"])
        result = triton.infer(
            "hotspot_detector",
            infer_inputs(feeds, binary),
            outputs=outputs,
            **{f"{direction}_compression_algorithm": algorithm},
        )
        expected = run_reference(reference, edge_models / "hotspot_detector/1/model.onnx", feeds)
        assert_matches(result, expected, binary)

    async def test_aio_compression_both_ways(
        self,
        aio_triton: triton_aio.InferenceServerClient,
        reference: Reference,
        edge_models: Path,
        feeds: dict[str, np.ndarray],
    ) -> None:
        """The asyncio client (which inflates responses itself) round-trips gzip both ways."""
        result = await aio_triton.infer(
            "hotspot_detector",
            infer_inputs(feeds, True),
            request_compression_algorithm="gzip",
            response_compression_algorithm="gzip",
        )
        expected = run_reference(reference, edge_models / "hotspot_detector/1/model.onnx", feeds)
        assert_matches(result, expected, binary=True)

    @pytest.mark.parametrize(
        ("algorithm", "inflate"), [("gzip", gzip.decompress), ("deflate", zlib.decompress)]
    )
    async def test_response_is_really_compressed(
        self,
        http: aiohttp.ClientSession,
        demo_server: RouterThread,
        feeds: dict[str, np.ndarray],
        algorithm: str,
        inflate: Callable[[bytes], bytes],
    ) -> None:
        """With Accept-Encoding a large response leaves compressed and inflates to the reply."""
        image = feeds["image"]
        doc = {
            "inputs": [
                {
                    "name": "image",
                    "shape": list(image.shape),
                    "datatype": "FP32",
                    "data": image.ravel().tolist(),
                }
            ],
            "outputs": [{"name": "heatmap"}, {"name": "scores"}],
        }
        async with http.post(
            f"{demo_server.url}/v2/models/hotspot_detector/infer",
            data=orjson.dumps(doc),
            headers={"Accept-Encoding": algorithm},
            auto_decompress=False,
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Encoding"] == algorithm
            raw = await resp.read()
        reply = orjson.loads(inflate(raw))
        assert [o["name"] for o in reply["outputs"]] == ["heatmap", "scores"]
        assert len(raw) < len(orjson.dumps(reply))


# --- every datatype through identity models ----------------------------------------------------

BYTES_SAMPLES = ["héllo wörld", "日本語のテキスト", "", "🚀 emoji", "tab\tand\nnewline", "a\x00b"]


def sample(datatype: str) -> np.ndarray:
    """A [2,3] tensor of `datatype` that includes the type's extremes."""
    if datatype == "BYTES":
        return np.array(BYTES_SAMPLES, dtype=object).reshape(2, 3)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    dtype = triton_http.triton_to_np_dtype(datatype)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, 2, 3]], dtype=dtype)
    info_f = np.finfo(dtype)
    return np.array([[info_f.max, -info_f.max, 0.0], [1 / 3, -2.5, info_f.tiny]], dtype=dtype)


@pytest.fixture(scope="module")
def identity_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterThread]:
    """A router serving one identity model per v2 datatype."""
    root = tmp_path_factory.mktemp("identity-repo")
    models = {f"identity_{dt.lower()}": {1: identity_model(dt)} for dt in DATATYPES}
    write_repository(root, models)
    with serve_in_thread(settings_for(root, inference_threads=2)) as server:
        yield server


@pytest.fixture
def identity_triton(identity_server: RouterThread) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(
        identity_server.host_port, connection_timeout=10.0, network_timeout=TIMEOUT_S
    )
    yield client
    client.close()


@pytest.fixture
async def identity_aio(
    identity_server: RouterThread,
) -> AsyncIterator[triton_aio.InferenceServerClient]:
    async with triton_aio.InferenceServerClient(
        identity_server.host_port, conn_timeout=TIMEOUT_S
    ) as client:
        yield client


def assert_round_trip(result: triton_http.InferResult, sent: np.ndarray, datatype: str) -> None:
    out = result.get_output("OUTPUT0")
    assert (out["datatype"], out["shape"]) == (datatype, list(sent.shape))
    got = result.as_numpy("OUTPUT0")
    if datatype == "BYTES":
        assert [_text(v) for v in got.ravel()] == BYTES_SAMPLES
    else:
        assert got.dtype == sent.dtype
        np.testing.assert_array_equal(got, sent)


class TestDatatypes:
    """Every v2 datatype survives a round trip through an identity model."""

    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    @pytest.mark.parametrize("datatype", DATATYPES)
    def test_sync_round_trip(
        self,
        identity_triton: triton_http.InferenceServerClient,
        request: pytest.FixtureRequest,
        datatype: str,
        binary: bool,
    ) -> None:
        """Values, including each type's extremes and non-ASCII UTF-8, come back unchanged."""
        sent = sample(datatype)
        tensor = triton_http.InferInput("INPUT0", list(sent.shape), datatype)
        tensor.set_data_from_numpy(sent, binary_data=binary)
        requested = [triton_http.InferRequestedOutput("OUTPUT0", binary_data=binary)]
        result = identity_triton.infer(f"identity_{datatype.lower()}", [tensor], outputs=requested)
        assert_round_trip(result, sent, datatype)

    @pytest.mark.parametrize("datatype", ["BOOL", "FP16", "UINT64", "BYTES"])
    async def test_aio_binary_round_trip(
        self, identity_aio: triton_aio.InferenceServerClient, datatype: str
    ) -> None:
        """The asyncio client's binary requests round-trip the awkward types too."""
        sent = sample(datatype)
        tensor = triton_aio.InferInput("INPUT0", list(sent.shape), datatype)
        tensor.set_data_from_numpy(sent, binary_data=True)
        result = await identity_aio.infer(f"identity_{datatype.lower()}", [tensor])
        assert_round_trip(result, sent, datatype)

    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    def test_classification_of_an_integer_output(
        self, identity_triton: triton_http.InferenceServerClient, binary: bool
    ) -> None:
        """class_count on an INT64 output writes its scores as integers, as Triton does
        ("7:1"), so int() reads them back."""
        sent = np.array([[3, 7, 1]], dtype=np.int64)
        tensor = triton_http.InferInput("INPUT0", [1, 3], "INT64")
        tensor.set_data_from_numpy(sent, binary_data=binary)
        requested = triton_http.InferRequestedOutput("OUTPUT0", binary_data=binary, class_count=2)
        result = identity_triton.infer("identity_int64", [tensor], outputs=[requested])
        entries = [[_text(e) for e in row] for row in result.as_numpy("OUTPUT0")]
        assert entries == [["7:1", "3:0"]]
        assert [int(e.split(":")[0]) for e in entries[0]] == [7, 3]

    def test_large_answers_are_made_off_the_event_loop(
        self, identity_triton: triton_http.InferenceServerClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Much JSON data is decoded, a large output classified and a large JSON answer
        written where no event loop runs (ranking 200k classes took ~0.5 s, during which
        every other request, liveness probes included, waited); a small request, and binary
        numbers (read in place, copied out), stay on the loop."""
        import router.inference.local as local
        import router.stages.dispatch as dispatch

        on_loop: dict[str, list[bool]] = {}

        def watched(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                on_loop.setdefault(name, []).append(_loop_running())
                return real(*args, **kwargs)

            return call

        monkeypatch.setattr(local, "classify", watched("classify", local.classify))
        monkeypatch.setattr(dispatch, "build_request", watched("decode", dispatch.build_request))
        monkeypatch.setattr(
            dispatch, "encode_response", watched("encode", dispatch.encode_response)
        )
        big = np.arange(200_000, dtype=np.float32).reshape(1, -1)
        tensor = triton_http.InferInput("INPUT0", list(big.shape), "FP32")
        tensor.set_data_from_numpy(big, binary_data=False)  # 1.3 MB of JSON data
        requested = triton_http.InferRequestedOutput("OUTPUT0", binary_data=True, class_count=3)
        result = identity_triton.infer("identity_fp32", [tensor], outputs=[requested])
        assert _text(result.as_numpy("OUTPUT0")[0, 0]).endswith(":199999")
        # Three strings are a small answer: written on the loop.
        assert on_loop == {"decode": [False], "classify": [False], "encode": [True]}
        on_loop.clear()
        whole = triton_http.InferRequestedOutput("OUTPUT0", binary_data=False)
        identity_triton.infer("identity_fp32", [tensor], outputs=[whole])
        assert on_loop == {"decode": [False], "encode": [False]}
        on_loop.clear()
        # Binary numbers are read in place and copied out: nothing worth a thread.
        tensor.set_data_from_numpy(big, binary_data=True)
        as_bytes = triton_http.InferRequestedOutput("OUTPUT0", binary_data=True)
        identity_triton.infer("identity_fp32", [tensor], outputs=[as_bytes])
        assert on_loop == {"decode": [True], "encode": [True]}
        on_loop.clear()
        small = np.arange(6, dtype=np.float32).reshape(1, -1)
        tensor = triton_http.InferInput("INPUT0", list(small.shape), "FP32")
        tensor.set_data_from_numpy(small, binary_data=True)
        identity_triton.infer("identity_fp32", [tensor], outputs=[requested])
        assert on_loop == {"decode": [True], "classify": [True], "encode": [True]}

    def test_metadata_names_each_datatype(
        self, identity_triton: triton_http.InferenceServerClient
    ) -> None:
        """Each identity model's metadata reports its protocol datatype."""
        for datatype in DATATYPES:
            meta = identity_triton.get_model_metadata(f"identity_{datatype.lower()}")
            assert meta["inputs"] == [{"name": "INPUT0", "datatype": datatype, "shape": [-1, -1]}]

    def test_config_names_each_datatype_as_triton(
        self, identity_triton: triton_http.InferenceServerClient
    ) -> None:
        """Each identity model's config names its datatype in Triton's terms (BYTES is
        TYPE_STRING) and, not batching, keeps every dimension."""
        for datatype in DATATYPES:
            config = identity_triton.get_model_config(f"identity_{datatype.lower()}")
            want = "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
            (tensor,) = config["output"]
            assert (tensor["data_type"], tensor["dims"]) == (want, [-1, -1])


# --- a third-party model from a pip wheel --------------------------------------------------------


def silero_file() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("silero-vad is not installed (pip install --no-deps silero-vad==6.2.3)")
    return Path(spec.submodule_search_locations[0]) / "data" / "silero_vad.onnx"


def silero_feeds(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input": (rng.standard_normal((1, 512)) * 0.1).astype(np.float32),
        "state": np.zeros((2, 1, 128), dtype=np.float32),
        "sr": np.array(16000, dtype=np.int64),
    }


@pytest.fixture(scope="module")
def silero_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterThread]:
    """silero_vad served from a copy of the wheel's file, warm-up off (see the xfail below)."""
    root = tmp_path_factory.mktemp("silero-repo")
    write_repository(
        root, {"silero_vad": {1: silero_file().read_bytes()}}, {"silero_vad": {"warmup": False}}
    )
    with serve_in_thread(settings_for(root, inference_threads=2)) as server:
        yield server


@pytest.fixture
def silero_triton(silero_server: RouterThread) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(
        silero_server.host_port, connection_timeout=10.0, network_timeout=TIMEOUT_S
    )
    yield client
    client.close()


class TestThirdPartyModel:
    """silero-vad, shipped inside a pip wheel, served with no model-specific code."""

    def test_metadata(self, silero_triton: triton_http.InferenceServerClient) -> None:
        """Dynamic dimensions show as -1 and the scalar `sr` as shape []."""
        meta = silero_triton.get_model_metadata("silero_vad")
        assert meta["inputs"] == [
            {"name": "input", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "state", "datatype": "FP32", "shape": [2, -1, 128]},
            {"name": "sr", "datatype": "INT64", "shape": []},
        ]
        assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
            ("output", "FP32"),
            ("stateN", "FP32"),
        ]
        assert meta["parameters"]["state"] == "READY"

    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    def test_outputs_match_onnxruntime(
        self, silero_triton: triton_http.InferenceServerClient, reference: Reference, binary: bool
    ) -> None:
        """Two chained calls (state fed back) give onnxruntime's outputs."""
        session = reference(silero_file())
        state = np.zeros((2, 1, 128), dtype=np.float32)
        for seed in (5, 6):
            feeds = {**silero_feeds(seed), "state": state}
            outputs = None if binary else json_outputs(["output", "stateN"])
            result = silero_triton.infer("silero_vad", infer_inputs(feeds, binary), outputs=outputs)
            expected = dict(zip(["output", "stateN"], session.run(None, feeds), strict=True))
            assert_matches(result, expected, binary)
            state = result.as_numpy("stateN")

    def test_bare_model_without_config_loads(self, tmp_path: Path) -> None:
        """A bare model.onnx with no config.yaml is served (warm-up must not make it unloadable)."""
        write_repository(tmp_path, {"silero_vad": {1: silero_file().read_bytes()}})
        with serve_in_thread(settings_for(tmp_path, inference_threads=1)) as server:
            client = triton_http.InferenceServerClient(server.host_port, network_timeout=TIMEOUT_S)
            try:
                assert client.is_model_ready("silero_vad")
            finally:
                client.close()


# --- dynamic batching under concurrency ----------------------------------------------------------


@pytest.fixture(scope="module")
def batching_server(edge_models: Path) -> Iterator[RouterThread]:
    """The demo models, each run slowed by 50 ms so that concurrent requests pile up."""
    settings = settings_for(edge_models, inference_threads=2)
    with serve_in_thread(settings, session_builder=slow_session_builder(0.05)) as server:
        yield server


class TestBatching:
    """Dynamic batching stacks concurrent requests and hands each caller its own rows."""

    async def test_each_caller_gets_its_own_rows(
        self, batching_server: RouterThread, reference: Reference, edge_models: Path
    ) -> None:
        """48 concurrent requests of 1-3 distinct rows each match onnxruntime per request, and
        fewer session runs than rows show that batches formed."""
        rng = np.random.default_rng(7)
        requests = [rng.random((1 + i % 3, 3), dtype=np.float32) for i in range(48)]
        async with triton_aio.InferenceServerClient(
            batching_server.host_port, conn_timeout=TIMEOUT_S
        ) as client:
            before = await client.get_inference_statistics("color_classifier", "2")
            results = await asyncio.gather(
                *(
                    client.infer("color_classifier", infer_inputs({"rgb": r}, True))
                    for r in requests
                )
            )
            after = await client.get_inference_statistics("color_classifier", "2")
        session = reference(edge_models / "color_classifier/2/model.onnx")
        for rgb, result in zip(requests, results, strict=True):
            (expected,) = session.run(None, {"rgb": rgb})
            np.testing.assert_allclose(result.as_numpy("probs"), expected, rtol=1e-5, atol=1e-6)
        (old,), (new,) = before["model_stats"], after["model_stats"]
        rows = sum(len(r) for r in requests)
        assert new["inference_count"] - old["inference_count"] == rows
        executions = new["execution_count"] - old["execution_count"]
        assert 1 <= executions < len(requests)
        assert max(b["batch_size"] for b in new["batch_stats"]) > 3


# --- execution-provider fallback -----------------------------------------------------------------


class TestProviderFallback:
    """A provider that cannot take a model falls back to CPU, and says so."""

    def test_openvino_failure_falls_back_to_cpu(self, edge_models: Path) -> None:
        """With OpenVINO preferred but failing, every model runs on CPU and records why."""
        with serve_in_thread(
            settings_for(edge_models, inference_threads=1),
            providers=["OpenVINOExecutionProvider", "CPUExecutionProvider"],
            session_builder=refusing_provider_builder(["OpenVINOExecutionProvider"]),
        ) as server:
            client = triton_http.InferenceServerClient(server.host_port, network_timeout=TIMEOUT_S)
            try:
                params = client.get_model_metadata("color_classifier")["parameters"]
                assert client.is_server_ready()
                feeds = demo_inputs("color_classifier")
                result = client.infer("color_classifier", infer_inputs(feeds, True))
            finally:
                client.close()
        assert params["execution_provider"] == "CPUExecutionProvider"
        (fallback,) = params["provider_fallbacks"]
        assert fallback["provider"] == "OpenVINOExecutionProvider"
        assert "cannot compile" in fallback["error"]
        assert result.as_numpy("probs").shape == (4, 10)


def test_unknown_model_raises_with_status(triton: triton_http.InferenceServerClient) -> None:
    """tritonclient surfaces the router's 404 and message as an InferenceServerException."""
    feeds = demo_inputs("color_classifier")
    with pytest.raises(InferenceServerException) as info:
        triton.infer("no_such_model", infer_inputs(feeds, False))
    assert info.value.status() == "404"
    assert "no_such_model" in info.value.message()


@pytest.mark.parametrize(
    ("call", "names"),
    [
        (lambda c: c.load_model("color_classifier"), "model control"),
        (lambda c: c.unload_model("color_classifier"), "model control"),
        (lambda c: c.get_system_shared_memory_status(), "shared-memory"),
        (lambda c: c.register_system_shared_memory("r", "/r", 8), "shared-memory"),
        (lambda c: c.unregister_system_shared_memory(), "shared-memory"),
        (lambda c: c.get_cuda_shared_memory_status(), "shared-memory"),
        (lambda c: c.unregister_cuda_shared_memory("r"), "shared-memory"),
        (lambda c: c.get_trace_settings(), "trace settings"),
        (lambda c: c.get_trace_settings("color_classifier"), "trace settings"),
        (lambda c: c.update_log_settings({"log_verbose_level": 1}), "log settings"),
    ],
    ids=[
        "load",
        "unload",
        "shm-status",
        "shm-register",
        "shm-unregister",
        "cuda-shm-status",
        "cuda-shm-unregister",
        "trace",
        "model-trace",
        "log",
    ],
)
def test_triton_apis_not_offered_say_so(
    triton: triton_http.InferenceServerClient,
    call: Callable[[triton_http.InferenceServerClient], object],
    names: str,
) -> None:
    """Triton's model control, shared-memory, trace and log APIs answer 501 not supported with
    a reason, not a 404 that reads as a missing model or a wrong URL."""
    with pytest.raises(InferenceServerException) as info:
        call(triton)
    assert info.value.status() == "501"
    assert names in info.value.message()
    assert "not supported" in info.value.message()


async def test_aio_load_model_not_supported(aio_triton: triton_aio.InferenceServerClient) -> None:
    """The aio client's load_model gets the same 501, at once."""
    with pytest.raises(InferenceServerException) as info:
        await asyncio.wait_for(aio_triton.load_model("color_classifier"), 10)
    assert info.value.status() == "501"
