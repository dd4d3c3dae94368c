"""Tiny ONNX models for unit tests, built with onnx.helper so no binary file is committed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 9  # old enough for every onnxruntime the project supports

Dim = int | str


def _finish(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def double_model(shape: Sequence[Dim] = ("N", "D"), elem: int = TensorProto.FLOAT) -> bytes:
    """y = x * 2; string dimensions stay open (dynamic)."""
    two = helper.make_tensor("two", elem, [], [2])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", elem, list(shape))],
        [helper.make_tensor_value_info("y", elem, list(shape))],
        initializer=[two],
    )
    return _finish(graph)


def add_model() -> bytes:
    """z = x + y, x FP32 [N,3] and y FP32 [M,3] with independent open first dimensions: a
    request may broadcast a one-row y over several rows of x."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["z"])],
        "add",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 3]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
    )
    return _finish(graph)


def column_sum_model() -> bytes:
    """y = the sum of x's rows, keeping a first dimension of 1: an open first dimension on the
    output ("K") that is not the batch."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        "column_sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["K", 3])],
        initializer=[axes],
    )
    return _finish(graph)


def reshape_to_three_model() -> bytes:
    """Reshapes x (FP32 [N]) to [3]: any input without exactly 3 elements fails at run time."""
    target = helper.make_tensor("target", TensorProto.INT64, [1], [3])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "target"], ["y"])],
        "reshape3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        initializer=[target],
    )
    return _finish(graph)


def lookup_model() -> bytes:
    """y = [10, 20, 30, 40][i] for i INT64 [N, 1]: an index past 3 fails the run, whatever
    other rows it was stacked with."""
    table = helper.make_tensor("table", TensorProto.FLOAT, [4], [10, 20, 30, 40])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "i"], ["y"])],
        "lookup",
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        initializer=[table],
    )
    return _finish(graph)


def cpu_session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4  # fatal only: failing runs are expected here
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def write_model(repo: Path, name: str, version: int, data: bytes) -> Path:
    """Place `data` as <repo>/<name>/<version>/model.onnx and return its path."""
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(data)
    return path
