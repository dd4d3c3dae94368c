"""Building onnxruntime sessions for the model repository, and what onnxruntime offers."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

# (model bytes, intra-op threads, providers with options) -> an onnxruntime InferenceSession
SessionBuilder = Callable[[bytes, int, list[tuple[str, dict[str, Any]]]], Any]

# The version folder of the model being loaded. The session is built from the bytes that were
# hashed (so the pinned sha256 covers what runs), and onnxruntime would look for a model's
# external data files (weights.bin next to model.onnx) in the working directory instead.
LOADING_FOLDER: ContextVar[Path | None] = ContextVar("loading_folder", default=None)
NO_EXTERNAL_DATA = ".pinned-sha256-takes-no-external-data"  # a folder that never exists


def default_session_builder(
    data: bytes, threads: int, chosen: list[tuple[str, dict[str, Any]]]
) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Fatal only: onnxruntime's own logger writes to stderr past our log config, and its
    # error lines quote the values a run failed on (a request's card number as an index).
    # Its errors reach us as exceptions anyway, reported without the request's values.
    options.log_severity_level = 4
    folder = LOADING_FOLDER.get()
    if folder is not None:
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(folder)
        )
    return ort.InferenceSession(data, options, providers=chosen)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def all_providers() -> list[str]:
    """Every provider name this onnxruntime knows, installed here or not."""
    import onnxruntime as ort

    return list(ort.get_all_providers())
