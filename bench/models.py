"""Benchmark models built with onnx.helper, their model repository and their request bodies.

mlp:   x [N,64] -> Gemm(256) -> Relu -> Gemm(10) -> Softmax -> probs [N,10]  (seed 0)
image: image [N,3,S,S] -> 4 x (Conv 3x3 + Relu, pooling) -> GlobalAveragePool -> Gemm(10)
       -> Softmax -> probs [N,10]; ~8 ms per image on one CPU core at S=224 (width 64).

`write_repository` lays them out in Triton's layout with a `config.yaml` per model, so the
router and the floor server load the very same bytes:
  mlp/                  no dynamic batching (every request runs alone, like the floor)
  mlp_batched/          dynamic batching up to 64 rows, max_queue_delay 100 µs
  mlp_batched_nodelay/  dynamic batching up to 64 rows, max_queue_delay 0 (batches form only
                        from requests that queue while the previous batch runs)
  image/                no dynamic batching
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # old enough for every onnxruntime the router supports
IMAGE_SIZE = 224
MLP_BATCH_DELAY_US = 100


def _batched(delay_us: int) -> str:
    return (
        "intra_op_threads: 1\nmax_batch_size: 64\n"
        f"dynamic_batching:\n  max_queue_delay_microseconds: {delay_us}\nwarmup: true\n"
    )


CONFIGS = {
    "mlp": "intra_op_threads: 1\nmax_batch_size: 0\nwarmup: true\n",
    "mlp_batched": _batched(MLP_BATCH_DELAY_US),
    "mlp_batched_nodelay": _batched(0),
    "image": "intra_op_threads: 1\nmax_batch_size: 0\nwarmup: true\n",
}
MLP_VARIANTS = ("mlp", "mlp_batched", "mlp_batched_nodelay")  # one .onnx, three configs
# model name -> input name
INPUTS = dict.fromkeys(MLP_VARIANTS, "x") | {"image": "image"}


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def build_mlp(n_in: int = 64, n_hidden: int = 256, n_out: int = 10, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    inits = [
        _init("W1", rng.standard_normal((n_in, n_hidden)) * 0.1),
        _init("b1", np.zeros(n_hidden)),
        _init("W2", rng.standard_normal((n_hidden, n_out)) * 0.1),
        _init("b2", np.zeros(n_out)),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "W2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_out])],
        inits,
    )
    return _finish(graph).SerializeToString()


def build_image_model(size: int = IMAGE_SIZE, width: int = 64, seed: int = 0) -> bytes:
    """A small CNN whose cost is dominated by full-resolution convolutions (ms, not µs)."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    # (in channels, out channels, stride, pool after): 224 -> 112 -> 56 -> 28
    layers = [(3, width, 2, False), (width, width, 1, True), (width, 2 * width, 1, True)]
    layers.append((2 * width, 2 * width, 1, False))
    x = "image"
    for i, (c_in, c_out, stride, pool) in enumerate(layers):
        fan_in = c_in * 9
        inits += [
            _init(f"w{i}", rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2.0 / fan_in)),
            _init(f"b{i}", np.zeros(c_out)),
        ]
        nodes += [
            helper.make_node(
                "Conv",
                [x, f"w{i}", f"b{i}"],
                [f"c{i}"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            ),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
        if pool:
            nodes.append(
                helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2])
            )
            x = f"p{i}"
    c_last = layers[-1][1]
    inits += [
        _init("fw", rng.standard_normal((c_last, 10)) * np.sqrt(1.0 / c_last)),
        _init("fb", np.zeros(10)),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "image",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return _finish(graph).SerializeToString()


def write_repository(root: Path, image_size: int = IMAGE_SIZE) -> dict[str, Path]:
    """Write every model with its config.yaml; returns model name -> model.onnx path."""
    mlp = build_mlp()
    built = dict.fromkeys(MLP_VARIANTS, mlp) | {"image": build_image_model(image_size)}
    paths = {}
    for name, data in built.items():
        folder = root / name / "1"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.onnx").write_bytes(data)
        (root / name / "config.yaml").write_text(CONFIGS[name], encoding="utf-8")
        paths[name] = folder / "model.onnx"
    return paths


def make_session(path: Path, threads: int = 1) -> Any:
    """A session with the options the router's default session builder uses."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def mlp_input(seed: int = 1) -> np.ndarray:
    """One row of 64 features, rounded to 4 decimals so the JSON body stays ~0.5 KB."""
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform(-1, 1, (1, 64)), 4).astype(np.float32)


def image_input(size: int = IMAGE_SIZE, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (1, 3, size, size)).astype(np.float32)


def json_body(name: str, array: np.ndarray) -> bytes:
    """A KServe v2 JSON request with the tensor in `data` (decimal text)."""
    doc = {
        "id": "bench",
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": "FP32",
                "data": [float(f"{v:.4f}") for v in array.ravel().tolist()],
            }
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def binary_body(name: str, array: np.ndarray) -> tuple[bytes, int]:
    """A v2 request using the binary tensor extension: (body, Inference-Header-Content-Length)."""
    raw = np.ascontiguousarray(array, dtype=np.float32).tobytes()
    doc = {
        "id": "bench",
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
    }
    header = json.dumps(doc, separators=(",", ":")).encode()
    return header + raw, len(header)
