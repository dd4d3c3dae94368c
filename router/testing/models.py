"""Tiny ONNX models and model repositories for tests. Needs `onnx` (the `test`/`bench`
extra), imported only when a model is built."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from router.inference.repository import MODEL_FILE, SessionBuilder, default_session_builder
from router.v2.datatypes import BY_NAME

# Every tensor datatype of the KServe v2 protocol, from the codec's own table.
DATATYPES: tuple[str, ...] = tuple(BY_NAME)


def identity_model(datatype: str, *, name: str = "identity") -> bytes:
    """A serialized ONNX model `INPUT0 -> Identity -> OUTPUT0` of one v2 datatype, any shape
    whose first dimension is the batch."""
    from onnx import TensorProto, helper

    elem = {
        "BOOL": TensorProto.BOOL,
        "UINT8": TensorProto.UINT8,
        "UINT16": TensorProto.UINT16,
        "UINT32": TensorProto.UINT32,
        "UINT64": TensorProto.UINT64,
        "INT8": TensorProto.INT8,
        "INT16": TensorProto.INT16,
        "INT32": TensorProto.INT32,
        "INT64": TensorProto.INT64,
        "FP16": TensorProto.FLOAT16,
        "FP32": TensorProto.FLOAT,
        "FP64": TensorProto.DOUBLE,
        "BYTES": TensorProto.STRING,
    }[datatype]
    dims: list[str | int] = ["N", "M"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        name,
        [helper.make_tensor_value_info("INPUT0", elem, dims)],
        [helper.make_tensor_value_info("OUTPUT0", elem, dims)],
    )
    # Opset 17 / IR 8, like the demo models, so any supported onnxruntime loads it.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def write_repository(
    root: Path,
    models: Mapping[str, Mapping[int, bytes]],
    configs: Mapping[str, Mapping[str, Any] | str] | None = None,
) -> Path:
    """Write `<root>/<model>/<version>/model.onnx` (+ `config.yaml` from a mapping or YAML text)
    and return `root`."""
    for model, versions in models.items():
        for version, data in versions.items():
            folder = root / model / str(version)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / MODEL_FILE).write_bytes(data)
    for model, config in (configs or {}).items():
        text = config if isinstance(config, str) else yaml.safe_dump(dict(config))
        (root / model).mkdir(parents=True, exist_ok=True)
        (root / model / "config.yaml").write_text(text, encoding="utf-8")
    return root


class _SlowSession:
    """A real session whose every run takes at least `delay_s` longer (runs on the executor)."""

    def __init__(self, session: Any, delay_s: float) -> None:
        self._session = session
        self._delay_s = delay_s

    def run(self, output_names: Any, feeds: Any, *args: Any) -> Any:
        time.sleep(self._delay_s)
        return self._session.run(output_names, feeds, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def slow_session_builder(
    delay_s: float, *, base: SessionBuilder = default_session_builder
) -> SessionBuilder:
    """A session builder whose sessions sleep `delay_s` per run: a busy model on demand."""

    def build(data: bytes, threads: int, chosen: list[tuple[str, dict[str, Any]]]) -> Any:
        return _SlowSession(base(data, threads, chosen), delay_s)

    return build


def refusing_provider_builder(
    refused: Sequence[str], *, base: SessionBuilder = default_session_builder
) -> SessionBuilder:
    """A session builder that fails, like a provider that cannot take the model, whenever the
    first provider asked for is in `refused`."""

    def build(data: bytes, threads: int, chosen: list[tuple[str, dict[str, Any]]]) -> Any:
        first = chosen[0][0] if chosen else ""
        if first in refused:
            raise RuntimeError(f"{first} cannot compile this model (refused by the test kit)")
        return base(data, threads, chosen)

    return build
