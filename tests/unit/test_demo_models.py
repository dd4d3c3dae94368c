"""Behaviour and reproducibility of the demo models committed under edge_models/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

REPO_DIR = Path(__file__).resolve().parents[2] / "edge_models"
DEMO_DIR = Path(__file__).resolve().parents[2] / "router" / "demo" / "models"
BUILD_SCRIPT = REPO_DIR / "build_demo_models.py"
MODEL_FILES = [
    "color_classifier/1/model.onnx",
    "color_classifier/2/model.onnx",
    "hotspot_detector/1/model.onnx",
]
DEMO_FILES = ["color_classifier_large/1/model.onnx"]
LARGE = DEMO_DIR / DEMO_FILES[0]
# Column order of `probs`, as documented in edge_models/README.md.
COLOR_LABELS = [
    "red",
    "orange",
    "yellow",
    "green",
    "cyan",
    "blue",
    "purple",
    "white",
    "black",
    "gray",
]
AMBIENT_C = 20.0


def _session(rel_path: str | Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(REPO_DIR / rel_path), providers=["CPUExecutionProvider"])


def _load_build_script() -> ModuleType:
    """Import edge_models/build_demo_models.py by path (edge_models is not a package)."""
    spec = importlib.util.spec_from_file_location("build_demo_models", BUILD_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # No __pycache__/ inside the model repository: the router would see it as a model directory.
    previous, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = previous
    return module


def _io(session: ort.InferenceSession) -> tuple[list[tuple[str, str, list[object]]], ...]:
    """(inputs, outputs) as (name, type, shape) triples."""
    return tuple(
        [(arg.name, arg.type, list(arg.shape)) for arg in args]
        for args in (session.get_inputs(), session.get_outputs())
    )


def test_build_is_byte_identical(tmp_path: Path) -> None:
    """Rebuilding into a temp dir reproduces every committed model.onnx byte for byte."""
    edge, demo = tmp_path / "edge", tmp_path / "demo"
    written = _load_build_script().write_all(edge, demo)
    expected = [edge / f for f in MODEL_FILES] + [demo / f for f in DEMO_FILES]
    assert sorted(written) == sorted(expected)
    for rel_path in MODEL_FILES:
        assert (edge / rel_path).read_bytes() == (REPO_DIR / rel_path).read_bytes(), rel_path
    for rel_path in DEMO_FILES:
        assert (demo / rel_path).read_bytes() == (DEMO_DIR / rel_path).read_bytes(), rel_path


@pytest.mark.parametrize("path", [REPO_DIR / f for f in MODEL_FILES] + [LARGE], ids=str)
def test_models_are_small_opset17_ir8(path: Path) -> None:
    """Each model stays tiny and uses opset 17 / IR 8 so older onnxruntime releases load it."""
    model = onnx.load(str(path))
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert path.stat().st_size < 8192


def test_configs_only_use_known_keys() -> None:
    """config.yaml files stick to the router's schema and carry no sha256 pins."""
    known = {
        "description",
        "labels",
        "labels_file",
        "label_output",
        "max_batch_size",
        "dynamic_batching",
        "instance_count",
        "intra_op_threads",
        "execution_providers",
        "sha256",
        "warmup",
    }
    for folder in (REPO_DIR / "color_classifier", REPO_DIR / "hotspot_detector", LARGE.parents[1]):
        model = folder.name
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert set(config) <= known, model
        assert set(config["dynamic_batching"]) <= {"max_queue_delay_microseconds", "max_queue_size"}
        assert "sha256" not in config


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def color_session(request: pytest.FixtureRequest) -> ort.InferenceSession:
    """Each color_classifier version in turn; both must behave the same apart from confidence."""
    return _session(f"color_classifier/{request.param}/model.onnx")


@pytest.mark.parametrize("model", ["color_classifier", "hotspot_detector"])
def test_router_accepts_config_and_batching(model: str) -> None:
    """The router's own config loader accepts config.yaml and sees a batchable signature."""
    model_config = pytest.importorskip("router.inference.model_config")
    signature = pytest.importorskip("router.inference.signature")
    config = model_config.load_model_config(REPO_DIR / model)
    assert config.max_batch_size > 0
    assert not config.sha256
    versions = sorted(int(p.name) for p in (REPO_DIR / model).iterdir() if p.name.isdigit())
    assert signature.from_session(_session(f"{model}/{versions[-1]}/model.onnx")).batchable


class TestColorClassifier:
    """color_classifier: rgb FP32 [N,3] -> probs FP32 [N,10], nearest colour prototype."""

    def test_signature(self, color_session: ort.InferenceSession) -> None:
        """Input and output names, dtypes and (dynamic-batch) shapes match the README."""
        inputs, outputs = _io(color_session)
        assert inputs == [("rgb", "tensor(float)", ["N", 3])]
        assert outputs == [("probs", "tensor(float)", ["N", 10])]

    @pytest.mark.parametrize(
        ("rgb", "label"),
        [
            ([1.0, 0.0, 0.0], "red"),
            ([0.0, 0.0, 1.0], "blue"),
            ([0.5, 0.5, 0.5], "gray"),
            ([0.0, 0.0, 0.0], "black"),
            ([1.0, 1.0, 1.0], "white"),
            ([1.0, 0.55, 0.0], "orange"),
            ([1.0, 1.0, 0.0], "yellow"),
            ([0.1, 0.9, 0.1], "green"),
            ([0.0, 0.9, 0.9], "cyan"),
            ([0.6, 0.1, 0.7], "purple"),
        ],
    )
    def test_top_label(
        self, color_session: ort.InferenceSession, rgb: list[float], label: str
    ) -> None:
        """Typical colours get the expected label."""
        (probs,) = color_session.run(["probs"], {"rgb": np.array([rgb], dtype=np.float32)})
        assert COLOR_LABELS[int(np.argmax(probs[0]))] == label

    def test_batch_rows_are_independent_softmaxes(
        self, color_session: ort.InferenceSession
    ) -> None:
        """A batch gives the same rows as single requests, and every row sums to 1."""
        batch = np.array([[1, 0, 0], [0, 0, 1], [0.3, 0.6, 0.2]], dtype=np.float32)
        (probs,) = color_session.run(None, {"rgb": batch})
        singles = [color_session.run(None, {"rgb": row[None]})[0][0] for row in batch]
        np.testing.assert_allclose(probs, np.stack(singles), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

    def test_v2_is_softer_than_v1(self) -> None:
        """Version 2 has the same argmax but lower confidence (smaller logit scale)."""
        rgb = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [1, 0.55, 0]], dtype=np.float32)
        (p1,) = _session("color_classifier/1/model.onnx").run(None, {"rgb": rgb})
        (p2,) = _session("color_classifier/2/model.onnx").run(None, {"rgb": rgb})
        np.testing.assert_array_equal(p1.argmax(axis=1), p2.argmax(axis=1))
        assert np.all(p2.max(axis=1) < p1.max(axis=1))

    def test_config_labels_match_model(self) -> None:
        """config.yaml labels are in the column order of `probs`."""
        config = yaml.safe_load((REPO_DIR / "color_classifier" / "config.yaml").read_text())
        assert config["labels"] == COLOR_LABELS
        assert config["label_output"] == "probs"
        assert config["max_batch_size"] == 64


class TestColorClassifierLarge:
    """color_classifier_large (the demo's central tier): the small model's labels from four
    shades per colour, so dark and muted colours get the right, confident answer."""

    def test_signature_and_labels_match_the_small_model(self, large: ort.InferenceSession) -> None:
        """Same input, output and labels as color_classifier: an escalated answer reads alike."""
        assert _io(large) == _io(_session("color_classifier/2/model.onnx"))
        config = yaml.safe_load((LARGE.parents[1] / "config.yaml").read_text())
        assert (config["labels"], config["label_output"]) == (COLOR_LABELS, "probs")

    def test_every_shade_gets_its_label(self, large: ort.InferenceSession) -> None:
        """Each of the model's shade prototypes is classified as the colour it belongs to."""
        shades = _load_build_script().COLOR_SHADES
        rows = [(label, shade) for label, group in shades.items() for shade in group]
        (probs,) = large.run(None, {"rgb": np.array([s for _, s in rows], dtype=np.float32)})
        assert [COLOR_LABELS[i] for i in probs.argmax(axis=1)] == [label for label, _ in rows]
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

    @pytest.mark.parametrize(
        ("rgb", "small_says", "label"),
        [([0.0, 0.4, 0.0], "black", "green"), ([0.1, 0.1, 0.45], "purple", "blue")],
    )
    def test_corrects_the_small_model(
        self, large: ort.InferenceSession, rgb: list[float], small_says: str, label: str
    ) -> None:
        """Where the small model is wrong and unsure, the large one is right and surer."""
        x = {"rgb": np.array([rgb], dtype=np.float32)}
        (small,) = _session("color_classifier/2/model.onnx").run(None, x)
        (big,) = large.run(None, x)
        assert (COLOR_LABELS[int(small.argmax())], COLOR_LABELS[int(big.argmax())]) == (
            small_says,
            label,
        )
        assert small.max() < 0.9  # the edge escalates it
        assert big.max() > small.max()


@pytest.fixture(scope="module")
def large() -> ort.InferenceSession:
    return _session(LARGE)


def _frame(height: int, width: int, hot: list[tuple[slice, slice, float]]) -> np.ndarray:
    """A [1,1,H,W] frame at ambient temperature with the given (rows, cols, temp) regions."""
    frame = np.full((1, 1, height, width), AMBIENT_C, dtype=np.float32)
    for rows, cols, temp in hot:
        frame[0, 0, rows, cols] = temp
    return frame


@pytest.fixture(scope="module")
def hotspot_session() -> ort.InferenceSession:
    return _session("hotspot_detector/1/model.onnx")


class TestHotspotDetector:
    """hotspot_detector: image [N,1,H,W] -> boxes [N,4], scores [N], detected [N], heatmap."""

    def test_signature(self, hotspot_session: ort.InferenceSession) -> None:
        """Input and output names, dtypes and dynamic shapes match the README."""
        inputs, outputs = _io(hotspot_session)
        assert inputs == [("image", "tensor(float)", ["N", 1, "H", "W"])]
        assert outputs == [
            ("boxes", "tensor(float)", ["N", 4]),
            ("scores", "tensor(float)", ["N"]),
            ("detected", "tensor(bool)", ["N"]),
            ("heatmap", "tensor(float)", ["N", 1, "H_div_8", "W_div_8"]),
        ]

    @pytest.mark.parametrize(
        ("height", "width", "hot", "box"),
        [
            (32, 48, [(slice(5, 10), slice(7, 20), 80.0)], [7, 5, 19, 9]),
            (32, 48, [(slice(0, 1), slice(0, 1), 60.5)], [0, 0, 0, 0]),
            (32, 48, [(slice(31, 32), slice(47, 48), 99.0)], [47, 31, 47, 31]),
            (32, 48, [(slice(None), slice(None), 70.0)], [0, 0, 47, 31]),
            # Two separate blobs: one box enclosing both.
            (
                16,
                24,
                [(slice(2, 4), slice(20, 22), 65.0), (slice(9, 12), slice(3, 5), 90.0)],
                [3, 2, 21, 11],
            ),
            # Non-multiple-of-8 size, hot pixel in the rows the heatmap drops.
            (20, 30, [(slice(18, 19), slice(29, 30), 75.0)], [29, 18, 29, 18]),
        ],
    )
    def test_box_is_exact(
        self,
        hotspot_session: ort.InferenceSession,
        height: int,
        width: int,
        hot: list[tuple[slice, slice, float]],
        box: list[int],
    ) -> None:
        """The box is the inclusive [x0,y0,x1,y1] extent of all pixels above 60 C."""
        boxes, scores, detected, _ = hotspot_session.run(
            None, {"image": _frame(height, width, hot)}
        )
        np.testing.assert_array_equal(boxes, np.array([box], dtype=np.float32))
        assert scores.tolist() == [max(temp for _, _, temp in hot)]
        assert detected.dtype == np.bool_
        assert detected.tolist() == [True]

    @pytest.mark.parametrize("peak", [AMBIENT_C, 60.0, -5.0])
    def test_no_detection(self, hotspot_session: ort.InferenceSession, peak: float) -> None:
        """At or below the (strict) 60 C threshold nothing is detected and the box is all -1."""
        frame = _frame(32, 48, [(slice(3, 4), slice(3, 4), peak)])
        boxes, scores, detected, _ = hotspot_session.run(None, {"image": frame})
        np.testing.assert_array_equal(boxes, [[-1, -1, -1, -1]])
        assert scores.tolist() == [max(peak, AMBIENT_C)]
        assert detected.tolist() == [False]

    def test_heatmap_is_8x8_average(self, hotspot_session: ort.InferenceSession) -> None:
        """heatmap is the 8x8/stride-8 mean of the frame, [N,1,H//8,W//8]."""
        frame = _frame(
            32, 48, [(slice(8, 16), slice(16, 24), 84.0), (slice(0, 1), slice(0, 1), 84.0)]
        )
        (heatmap,) = hotspot_session.run(["heatmap"], {"image": frame})
        expected = frame.reshape(1, 1, 4, 8, 6, 8).mean(axis=(3, 5))
        assert heatmap.shape == (1, 1, 4, 6)
        np.testing.assert_allclose(heatmap, expected, rtol=1e-6)
        assert heatmap[0, 0, 1, 2] == pytest.approx(84.0)
        assert heatmap[0, 0, 0, 0] == pytest.approx(AMBIENT_C + (84.0 - AMBIENT_C) / 64)

    def test_batch_mixes_hot_and_cold_frames(self, hotspot_session: ort.InferenceSession) -> None:
        """Frames in one batch are processed independently, including the no-detection case."""
        hot = _frame(32, 48, [(slice(5, 10), slice(7, 20), 80.0)])
        cold = _frame(32, 48, [])
        corner = _frame(32, 48, [(slice(30, 32), slice(0, 2), 61.0)])
        boxes, scores, detected, heatmap = hotspot_session.run(
            None, {"image": np.concatenate([hot, cold, corner])}
        )
        np.testing.assert_array_equal(boxes, [[7, 5, 19, 9], [-1, -1, -1, -1], [0, 30, 1, 31]])
        np.testing.assert_array_equal(scores, [80.0, AMBIENT_C, 61.0])
        assert detected.tolist() == [True, False, True]
        assert heatmap.shape == (3, 1, 4, 6)

    def test_readme_curl_example(self, hotspot_session: ort.InferenceSession) -> None:
        """The 8x8 single-hot-pixel example in edge_models/README.md gives the documented output."""
        frame = _frame(8, 8, [(slice(2, 3), slice(3, 4), 75.0)])
        boxes, scores, detected, heatmap = hotspot_session.run(None, {"image": frame})
        np.testing.assert_array_equal(boxes, [[3, 2, 3, 2]])
        assert scores.tolist() == [75.0]
        assert detected.tolist() == [True]
        assert heatmap.shape == (1, 1, 1, 1)
        assert heatmap.item() == pytest.approx(20.859375)

    def test_config(self) -> None:
        """config.yaml enables batches of up to 8 frames with a single intra-op thread."""
        config = yaml.safe_load((REPO_DIR / "hotspot_detector" / "config.yaml").read_text())
        assert config["max_batch_size"] == 8
        assert config["intra_op_threads"] == 1
        assert "dynamic_batching" in config
        assert config["description"]
