"""A bare model.onnx whose graph gives an input no rank at all: served for any shape the client
sends (only the element count is checked against the data), reported as shape [-1], never
taken for a scalar; a true scalar input stays one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from router.inference.graph_shapes import unranked_tensors
from router.settings import Settings
from router.testing import RouterThread, write_repository


def unranked_model() -> bytes:
    """`x` (no shape at all) + 0.5 → `y` (no shape), and `s` (a scalar) → `z` (a scalar);
    the constant is an initializer, so the graph holds weights to skip over."""
    half = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "half"], ["y"]), helper.make_node("Identity", ["s"], ["z"])],
        "unranked",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, []),
        ],
        initializer=[half],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterThread]:
    repository = write_repository(
        tmp_path_factory.mktemp("repo"), {"anyrank": {1: unranked_model()}}
    )
    settings = Settings.model_validate(
        {"models": {"repository": repository, "inference_threads": 1}, "cache": {"enabled": False}}
    )
    with RouterThread(settings) as running:
        yield running


def infer(router: RouterThread, x_shape: list[int], x: list[float]) -> httpx.Response:
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": x_shape, "data": x},
            {"name": "s", "datatype": "FP32", "shape": [], "data": [7.0]},
        ]
    }
    return httpx.post(router.url + "/v2/models/anyrank/infer", json=body, timeout=10)


def test_the_graph_reader_tells_unknown_rank_from_scalar() -> None:
    """Only the tensors whose type has no shape are named; bytes that are no model name none."""
    assert unranked_tensors(unranked_model()) == {"x", "y"}
    assert unranked_tensors(b"\xff\xff\xff") == frozenset()


@pytest.mark.parametrize("shape", [[6], [2, 3], [1, 2, 1, 3], [3, 2]])
def test_an_unranked_input_takes_any_shape(router: RouterThread, shape: list[int]) -> None:
    """Whatever the rank the client sends, the model runs on it and answers in that shape."""
    answer = infer(router, shape, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert outputs["y"]["shape"] == shape
    assert outputs["y"]["data"] == [1.5, 2.5, 3.5, 4.5, 5.5, 6.5]
    assert (outputs["z"]["shape"], outputs["z"]["data"]) == ([], [7.0])


def test_an_unranked_input_still_needs_as_many_elements_as_its_shape(
    router: RouterThread,
) -> None:
    """The shape is checked against the data: 2x3 with five values is a 400."""
    answer = infer(router, [2, 3], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert answer.status_code == 400
    assert "x" in answer.json()["error"]


def test_a_scalar_input_is_still_a_scalar(router: RouterThread) -> None:
    """The graph's real scalar keeps its shape []: a vector for it is a 400."""
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]},
            {"name": "s", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]},
        ]
    }
    answer = httpx.post(router.url + "/v2/models/anyrank/infer", json=body, timeout=10)
    assert answer.status_code == 400
    assert "expected shape []" in answer.json()["error"]


def test_metadata_and_config_report_an_unranked_tensor_as_minus_one(router: RouterThread) -> None:
    """Model metadata and Triton's config give the unranked tensors shape/dims [-1] and the
    scalars []."""
    meta = httpx.get(router.url + "/v2/models/anyrank", timeout=10).json()
    shapes = {t["name"]: t["shape"] for t in meta["inputs"] + meta["outputs"]}
    assert shapes == {"x": [-1], "s": [], "y": [-1], "z": []}
    config = httpx.get(router.url + "/v2/models/anyrank/config", timeout=10).json()
    dims = {t["name"]: t["dims"] for t in config["input"] + config["output"]}
    assert dims == {"x": [-1], "s": [], "y": [-1], "z": []}


def test_graph_reader_handles_the_demo_models(edge_models: Path) -> None:
    """Real models with every tensor ranked: nothing is named."""
    for path in sorted(edge_models.glob("*/*/model.onnx")):
        assert unranked_tensors(path.read_bytes()) == frozenset(), path
