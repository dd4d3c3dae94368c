"""Non-finite model outputs (NaN, ±Infinity) reach the client as such: in a JSON answer as
Triton writes them (bare NaN / Infinity / -Infinity tokens, which tritonclient reads back),
in a binary answer bit for bit; never as null, which a client reads as another answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton_http

from router.testing import RouterThread, serve_in_thread, settings_for, write_repository

MODEL = "logs"
# Log(0) = -inf, Log(-1) = NaN, Log(1) = 0; Neg of those: +inf, NaN, -0.0.
VALUES = np.array([[0.0, -1.0, 1.0, np.e]], dtype=np.float32)


def log_model() -> bytes:
    """x -> (Log(x), Neg(Log(x))), FP32 and FP64, batch-first."""
    from onnx import TensorProto, helper

    dims: list[str | int] = ["N", 4]
    graph = helper.make_graph(
        [
            helper.make_node("Log", ["x"], ["log"]),
            helper.make_node("Neg", ["log"], ["neg"]),
            helper.make_node("Cast", ["neg"], ["neg64"], to=TensorProto.DOUBLE),
        ],
        MODEL,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [
            helper.make_tensor_value_info("log", TensorProto.FLOAT, dims),
            helper.make_tensor_value_info("neg64", TensorProto.DOUBLE, dims),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("models"), {MODEL: {1: log_model()}})


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RouterThread]:
    with serve_in_thread(settings_for(repository)) as running:
        yield running


@pytest.fixture(scope="module")
def expected(repository: Path) -> dict[str, np.ndarray]:
    """What onnxruntime itself answers for VALUES."""
    session = ort.InferenceSession(
        str(repository / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    log, neg64 = session.run(["log", "neg64"], {"x": VALUES})
    assert np.isnan(log).any()
    assert np.isinf(log).any()
    assert np.isinf(neg64).any()
    return {"log": log, "neg64": neg64}


def _infer(server: RouterThread, binary: bool) -> triton_http.InferResult:
    client = triton_http.InferenceServerClient(server.host_port, network_timeout=30.0)
    try:
        tensor = triton_http.InferInput("x", list(VALUES.shape), "FP32")
        tensor.set_data_from_numpy(VALUES, binary_data=False)
        outputs = [
            triton_http.InferRequestedOutput(n, binary_data=binary) for n in ("log", "neg64")
        ]
        return client.infer(MODEL, [tensor], outputs=outputs)
    finally:
        client.close()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_reads_nan_and_infinity(
    server: RouterThread, expected: dict[str, np.ndarray], binary: bool
) -> None:
    """tritonclient decodes the router's answer to what onnxruntime gave: NaN where NaN, +inf
    and -inf, signed zeros kept, dtypes kept; a binary answer bit for bit (JSON's NaN token,
    as Triton's, has no sign)."""
    result = _infer(server, binary)
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got is not None
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)  # NaN matches NaN only
        numbers = ~np.isnan(want)
        assert np.array_equal(np.signbit(got[numbers]), np.signbit(want[numbers]))
        if binary:
            assert got.tobytes() == want.tobytes()


async def test_json_answer_has_triton_tokens_not_null(server: RouterThread) -> None:
    """The JSON body carries NaN, Infinity and -Infinity tokens (as Triton writes them), no null."""
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": VALUES.tolist()}]}
    )
    url = f"{server.url}/v2/models/{MODEL}/infer"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.post(url, data=body) as resp,
    ):
        assert resp.status == 200
        assert resp.content_type == "application/json"
        raw = await resp.read()
    assert b"null" not in raw
    assert b'"name":"log","datatype":"FP32","shape":[1,4],"data":[-Infinity,NaN,0.0,1.0]' in raw
    assert b'"name":"neg64","datatype":"FP64","shape":[1,4],"data":[Infinity,NaN,-0.0,-1.0' in raw
