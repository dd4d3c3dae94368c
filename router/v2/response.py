"""Encode a v2 inference response (JSON, or JSON header plus binary outputs) and Triton's
classification extension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from router.errors import InvalidTensor
from router.v2.datatypes import BYTES_LENGTH, Datatype, of_array


@dataclass(slots=True)
class OutputTensor:
    name: str
    array: np.ndarray
    binary: bool


def classify(
    array: np.ndarray, top_k: int, labels: tuple[str, ...], *, batched: bool = False
) -> np.ndarray:
    """Triton's classification extension: "score:index[:label]" strings, best first. A model
    that batches is ranked per batch entry over all of that entry's elements (shape [N, k]);
    one that does not, over the whole tensor (shape [k]). The index is the element's place in
    the flattened entry, as Triton counts it. Scores are written as Triton's std::to_string
    writes them: six decimals for floats, an integer output's scores as integers ("7:2")."""
    values = np.asarray(array)
    if values.ndim == 0:
        raise InvalidTensor("classification needs an output with at least one dimension")
    # Explicit sizes: numpy cannot infer -1 beside a dimension of 0 (an empty batch).
    shape = (values.shape[0], math.prod(values.shape[1:])) if batched else (1, values.size)
    values = values.reshape(shape)
    k = min(top_k, values.shape[-1])
    # Ranked as floats (negating an unsigned integer would wrap); written from the values.
    order = np.argsort(-values.astype(np.float64), axis=-1, kind="stable")[..., :k]
    picked = np.take_along_axis(values, order, axis=-1)
    integral = values.dtype.kind in "iub"
    out = np.empty(order.shape, dtype=object)
    for pos in np.ndindex(order.shape):
        index = int(order[pos])
        label = f":{labels[index]}" if index < len(labels) else ""
        score = f"{int(picked[pos])}" if integral else f"{float(picked[pos]):f}"
        out[pos] = f"{score}:{index}{label}"
    return out if batched else out[0]


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[OutputTensor],
) -> tuple[bytes, int | None]:
    """The body and, when any output is binary, the JSON header's length for the response."""
    entries, chunks = [], []
    for out in outputs:
        dt = of_array(out.array)
        entry: dict[str, Any] = {"name": out.name, "datatype": dt.name, "shape": out.array.shape}
        if out.binary:
            raw = _to_binary(out.array, dt)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json_data(out.array, dt)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = entries
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _to_json_data(array: np.ndarray, dt: Datatype) -> Any:
    flat = array.ravel()
    if dt.is_bytes:
        return [_text(item) for item in flat]
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return orjson.Fragment(_with_non_finite(flat))
    return flat


# Triton writes its JSON with rapidjson's kWriteNanAndInfFlag: NaN, Infinity and -Infinity as
# bare tokens, which tritonclient (python-rapidjson) reads back as floats. orjson would write
# null for each, an answer the client reads as a different one.
_NON_FINITE = {"nan": b"NaN", "inf": b"Infinity", "-inf": b"-Infinity"}


def _with_non_finite(flat: np.ndarray) -> bytes:
    """A float tensor's `data` as orjson writes it, with its non-finite values as Triton's
    tokens instead of null. orjson's numbers never hold a comma, so the list splits into
    one token per element."""
    tokens = orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    for index in np.flatnonzero(~np.isfinite(flat)):
        tokens[index] = _NON_FINITE[str(float(flat[index]))]
    return b"[" + b",".join(tokens) + b"]"


def _text(item: Any) -> str:
    return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)


def _to_binary(array: np.ndarray, dt: Datatype) -> bytes:
    if not dt.is_bytes:
        return np.ascontiguousarray(array, dtype=dt.numpy).tobytes()
    parts = []
    for item in array.ravel():
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts += [BYTES_LENGTH.pack(len(raw)), raw]
    return b"".join(parts)
