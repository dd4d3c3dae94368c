"""Build the demo ONNX models of this model repository, deterministically.

Usage: python edge_models/build_demo_models.py [--out DIR] [--demo-out DIR]

Writes <DIR>/<model>/<version>/model.onnx (Triton layout) for:
  * color_classifier v1 and v2: nearest-prototype colour classifier, rgb [N,3] -> probs [N,10].
  * hotspot_detector v1: thermal-frame hotspot detector, image [N,1,H,W] -> boxes/scores/...
and, under <demo-out> (router/demo/models: the demo's central tier only, never an edge default):
  * color_classifier_large v1: the same labels from four shades per colour, rgb -> probs [N,10].

Every weight is a fixed constant and serialization is deterministic, so running the
script twice yields byte-identical files. config.yaml files are hand-written, not built here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# ir_version 8 (not the newest) so that older onnxruntime 1.1x/1.2x releases still load the files.
IR_VERSION = 8
PRODUCER = "layer-router/build_demo_models"
PRODUCER_VERSION = "1"

# Label order = column order of `probs`; keep it in sync with color_classifier/config.yaml.
COLOR_PROTOTYPES: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "orange": (1.0, 0.5, 0.0),
    "yellow": (1.0, 1.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "blue": (0.0, 0.0, 1.0),
    "purple": (0.5, 0.0, 0.5),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
}
COLOR_LABELS: list[str] = list(COLOR_PROTOTYPES)
# Multiplier applied to the logits before Softmax, per model version. v2 is "softer" (flatter
# probabilities, same argmax) so the repository demonstrates two distinct versions.
COLOR_LOGIT_SCALE: dict[int, float] = {1: 10.0, 2: 4.0}

# The large model's shades: four prototypes per label (same label order), so dark, light and
# muted colours that sit between the small model's prototypes get a confident answer.
COLOR_SHADES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "red": ((1.0, 0.0, 0.0), (0.55, 0.0, 0.0), (0.85, 0.1, 0.15), (1.0, 0.35, 0.35)),
    "orange": ((1.0, 0.5, 0.0), (0.8, 0.4, 0.1), (1.0, 0.65, 0.3), (0.6, 0.3, 0.0)),
    "yellow": ((1.0, 1.0, 0.0), (0.85, 0.85, 0.1), (1.0, 1.0, 0.5), (0.8, 0.75, 0.05)),
    "green": ((0.0, 1.0, 0.0), (0.0, 0.5, 0.0), (0.5, 1.0, 0.5), (0.2, 0.7, 0.2)),
    "cyan": ((0.0, 1.0, 1.0), (0.0, 0.55, 0.55), (0.5, 1.0, 1.0), (0.1, 0.8, 0.8)),
    "blue": ((0.0, 0.0, 1.0), (0.0, 0.0, 0.5), (0.3, 0.3, 1.0), (0.1, 0.4, 0.9)),
    "purple": ((0.5, 0.0, 0.5), (1.0, 0.0, 1.0), (0.6, 0.2, 0.8), (0.3, 0.0, 0.3)),
    "white": ((1.0, 1.0, 1.0), (0.9, 0.9, 0.9), (0.95, 0.95, 0.85), (0.85, 0.9, 0.95)),
    "black": ((0.0, 0.0, 0.0), (0.1, 0.1, 0.1), (0.05, 0.05, 0.15), (0.15, 0.1, 0.05)),
    "gray": ((0.5, 0.5, 0.5), (0.35, 0.35, 0.35), (0.65, 0.65, 0.65), (0.5, 0.5, 0.55)),
}
LARGE_LOGIT_SCALE = 30.0

HOTSPOT_THRESHOLD_C = 60.0
HOTSPOT_POOL = 8
# Box reported for frames without any pixel above the threshold; [0,0,0,0] would be ambiguous
# with a real single-pixel hotspot at the top-left corner.
NO_BOX = -1.0


def _model(graph: onnx.GraphProto, version: int) -> onnx.ModelProto:
    """Wrap a graph in a checked ModelProto with fixed metadata (no timestamps, no hostnames)."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER,
        producer_version=PRODUCER_VERSION,
        model_version=version,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name=name)


def build_color_classifier(version: int) -> onnx.ModelProto:
    """rgb [N,3] -> probs [N,K]: softmax(scale * (2 x.p - |p|^2)), i.e. nearest prototype.

    -|x-p|^2 = 2 x.p - |p|^2 - |x|^2 and the |x|^2 term is the same for every class, so dropping
    it leaves the softmax unchanged; what is left is a single affine map, i.e. one Gemm.
    """
    scale = COLOR_LOGIT_SCALE[version]
    protos = np.array(list(COLOR_PROTOTYPES.values()), dtype=np.float64)  # [K,3]
    weight = (2.0 * scale * protos.T).astype(np.float32)  # [3,K]
    bias = (-scale * np.sum(protos**2, axis=1)).astype(np.float32)  # [K]
    num_classes = len(COLOR_LABELS)

    nodes = [
        helper.make_node("Gemm", ["rgb", "weight", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "color_classifier",
        inputs=[helper.make_tensor_value_info("rgb", TensorProto.FLOAT, ["N", 3])],
        outputs=[helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", num_classes])],
        initializer=[_const("weight", weight), _const("bias", bias)],
        doc_string=f"Nearest-prototype colour classifier; labels: {', '.join(COLOR_LABELS)}.",
    )
    return _model(graph, version)


def build_color_classifier_large(version: int) -> onnx.ModelProto:
    """rgb [N,3] -> probs [N,K]: each label scores its nearest shade, then softmax.

    As in the small model, one Gemm gives every shade's logit (the |x|^2 term dropped); a
    Reshape to [N,K,S] and a ReduceMax over the shades give each label its best shade's.
    """
    labels, shades = list(COLOR_SHADES), len(next(iter(COLOR_SHADES.values())))
    assert labels == COLOR_LABELS, "the large model answers with the small model's labels"
    protos = np.array([p for group in COLOR_SHADES.values() for p in group], dtype=np.float64)
    weight = (2.0 * LARGE_LOGIT_SCALE * protos.T).astype(np.float32)  # [3,K*S]
    bias = (-LARGE_LOGIT_SCALE * np.sum(protos**2, axis=1)).astype(np.float32)  # [K*S]
    nodes = [
        helper.make_node("Gemm", ["rgb", "weight", "bias"], ["shade_logits"]),
        helper.make_node("Reshape", ["shade_logits", "by_label"], ["label_shades"]),
        helper.make_node("ReduceMax", ["label_shades"], ["logits"], axes=[2], keepdims=0),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "color_classifier_large",
        inputs=[helper.make_tensor_value_info("rgb", TensorProto.FLOAT, ["N", 3])],
        outputs=[helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(labels)])],
        initializer=[
            _const("weight", weight),
            _const("bias", bias),
            _const("by_label", np.array([-1, len(labels), shades], dtype=np.int64)),
        ],
        doc_string=f"Nearest-shade colour classifier, {shades} shades per label: "
        f"{', '.join(labels)}.",
    )
    return _model(graph, version)


def _first_index_nodes(any_vec: str, out: str) -> list[onnx.NodeProto]:
    """Index of the first 1.0 along axis 1 of a 0/1 float [N,L] tensor (0 if there is none)."""
    return [helper.make_node("ArgMax", [any_vec], [out], axis=1, keepdims=0)]


def _last_index_nodes(any_vec: str, length: str, out: str) -> list[onnx.NodeProto]:
    """Index of the last 1.0 along axis 1 of a 0/1 float [N,L] tensor, as L-1 - first(reversed).

    Reversing with a negative-step Slice instead of ArgMax(select_last_index=1) keeps the graph
    to plain ops that every ONNX backend implements.
    """
    rev, first_rev, last_pos = f"{any_vec}_rev", f"{any_vec}_first_rev", f"{length}_minus_1"
    return [
        helper.make_node("Slice", [any_vec, "rev_starts", "rev_ends", "axis1", "rev_steps"], [rev]),
        helper.make_node("ArgMax", [rev], [first_rev], axis=1, keepdims=0),
        helper.make_node("Sub", [length, "one_i64"], [last_pos]),
        helper.make_node("Sub", [last_pos, first_rev], [out]),
    ]


def _hotspot_initializers() -> list[onnx.TensorProto]:
    int64_min = np.iinfo(np.int64).min
    return [
        _const("threshold", np.array(HOTSPOT_THRESHOLD_C, dtype=np.float32)),
        _const("no_box", np.array(NO_BOX, dtype=np.float32)),
        _const("one_i64", np.array(1, dtype=np.int64)),
        _const("axis1", np.array([1], dtype=np.int64)),
        # Slice(start=-1, end=INT64_MIN, step=-1) walks an axis from its last element to index 0.
        _const("rev_starts", np.array([-1], dtype=np.int64)),
        _const("rev_ends", np.array([int64_min], dtype=np.int64)),
        _const("rev_steps", np.array([-1], dtype=np.int64)),
    ]


def _hotspot_box_nodes() -> list[onnx.NodeProto]:
    """image -> boxes [N,4] float (x0,y0,x1,y1 inclusive), using `detected` to mask empty frames."""
    nodes = [
        helper.make_node("Greater", ["image", "threshold"], ["hot_mask"]),
        helper.make_node("Cast", ["hot_mask"], ["hot"], to=TensorProto.FLOAT),
        # Per-row / per-column "any hot pixel" as 0/1 floats: [N,H] and [N,W].
        helper.make_node("ReduceMax", ["hot"], ["row_any"], axes=[1, 3], keepdims=0),
        helper.make_node("ReduceMax", ["hot"], ["col_any"], axes=[1, 2], keepdims=0),
        # Shape(start, end) gives H and W as 1-element int64 tensors.
        helper.make_node("Shape", ["image"], ["height"], start=2, end=3),
        helper.make_node("Shape", ["image"], ["width"], start=3, end=4),
    ]
    nodes += _first_index_nodes("col_any", "x0")
    nodes += _first_index_nodes("row_any", "y0")
    nodes += _last_index_nodes("col_any", "width", "x1")
    nodes += _last_index_nodes("row_any", "height", "y1")
    nodes += [
        helper.make_node("Unsqueeze", [c, "axis1"], [f"{c}_col"]) for c in ("x0", "y0", "x1", "y1")
    ]
    nodes += [
        helper.make_node("Concat", ["x0_col", "y0_col", "x1_col", "y1_col"], ["box_i64"], axis=1),
        helper.make_node("Cast", ["box_i64"], ["box_f"], to=TensorProto.FLOAT),
        # Without any hot pixel the ArgMaxes return meaningless indices; replace by NO_BOX.
        helper.make_node("Unsqueeze", ["detected", "axis1"], ["detected_col"]),
        helper.make_node("Where", ["detected_col", "box_f", "no_box"], ["boxes"]),
    ]
    return nodes


def build_hotspot_detector(version: int) -> onnx.ModelProto:
    """image [N,1,H,W] (deg C) -> boxes [N,4], scores [N], detected [N], heatmap [N,1,H/8,W/8]."""
    nodes = [
        helper.make_node("ReduceMax", ["image"], ["scores"], axes=[1, 2, 3], keepdims=0),
        # max > threshold  <=>  some pixel > threshold, so this agrees with the box mask.
        helper.make_node("Greater", ["scores", "threshold"], ["detected"]),
        *_hotspot_box_nodes(),
        helper.make_node(
            "AveragePool",
            ["image"],
            ["heatmap"],
            kernel_shape=[HOTSPOT_POOL, HOTSPOT_POOL],
            strides=[HOTSPOT_POOL, HOTSPOT_POOL],
        ),
    ]
    float_t, bool_t = TensorProto.FLOAT, TensorProto.BOOL
    graph = helper.make_graph(
        nodes,
        "hotspot_detector",
        inputs=[helper.make_tensor_value_info("image", float_t, ["N", 1, "H", "W"])],
        outputs=[
            helper.make_tensor_value_info("boxes", float_t, ["N", 4]),
            helper.make_tensor_value_info("scores", float_t, ["N"]),
            helper.make_tensor_value_info("detected", bool_t, ["N"]),
            helper.make_tensor_value_info("heatmap", float_t, ["N", 1, "H_div_8", "W_div_8"]),
        ],
        initializer=_hotspot_initializers(),
        doc_string=(
            f"Thermal hotspot detector: pixels > {HOTSPOT_THRESHOLD_C} C are hot; boxes are "
            f"inclusive [x0,y0,x1,y1] pixel indices, {NO_BOX:g} when nothing is detected."
        ),
    )
    return _model(graph, version)


def build_all() -> dict[str, onnx.ModelProto]:
    """All demo models keyed by their repository-relative path."""
    return {
        "color_classifier/1/model.onnx": build_color_classifier(1),
        "color_classifier/2/model.onnx": build_color_classifier(2),
        "hotspot_detector/1/model.onnx": build_hotspot_detector(1),
    }


def build_demo() -> dict[str, onnx.ModelProto]:
    """The demo's central-only models, keyed by their repository-relative path."""
    return {"color_classifier_large/1/model.onnx": build_color_classifier_large(1)}


DEMO_MODELS = Path(__file__).resolve().parents[1] / "router" / "demo" / "models"


def write_all(out_dir: Path, demo_dir: Path | None = None) -> list[Path]:
    """Build every model under out_dir (and the demo's under demo_dir); the written paths."""
    written = []
    builds = [(out_dir, build_all())] + ([(demo_dir, build_demo())] if demo_dir else [])
    for root, models in builds:
        written += _write(root, models)
    return written


def _write(out_dir: Path, models: dict[str, onnx.ModelProto]) -> list[Path]:
    written = []
    for rel_path, model in models.items():
        path = out_dir / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        # SerializeToString directly: byte-stable, and no external-data side files.
        path.write_bytes(model.SerializeToString())
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="model repository root to write into (default: the folder of this script)",
    )
    parser.add_argument(
        "--demo-out",
        type=Path,
        default=DEMO_MODELS,
        help="where the demo's central-only models go (default: router/demo/models)",
    )
    args = parser.parse_args(argv)
    for path in write_all(args.out, args.demo_out):
        print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
