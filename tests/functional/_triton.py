"""Inputs for the demo models as tritonclient sends them, shared by the KServe v2 suites."""

from __future__ import annotations

import numpy as np
import tritonclient.http as triton_http


def demo_inputs(model: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for a demo model: random colours, or two frames of which the first has a hot patch."""
    rng = np.random.default_rng(seed)
    if model == "color_classifier":
        return {"rgb": rng.random((4, 3), dtype=np.float32)}
    frames = 20.0 + rng.random((2, 1, 16, 24), dtype=np.float32)
    frames[0, 0, 3:6, 10:14] = 75.0
    return {"image": frames}


def infer_inputs(feeds: dict[str, np.ndarray], binary: bool) -> list[triton_http.InferInput]:
    """tritonclient inputs for `feeds`, as JSON or binary tensors."""
    inputs = []
    for name, array in feeds.items():
        datatype = "BYTES" if array.dtype == object else triton_http.np_to_triton_dtype(array.dtype)
        tensor = triton_http.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs
