"""Decode v2 inference requests (JSON and the binary tensor extension) and encode responses.

Pure functions over bytes and numpy arrays: no I/O, no model knowledge. Checking tensors against
a model's signature is the model's job (`router.inference.signature`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from router.errors import InvalidTensor, MalformedBody
from router.nesting import TOO_DEEP, check_depth, is_depth_error
from router.v2.datatypes import BY_NAME, Datatype, of_array

_U32 = struct.Struct("<I")
MAX_RANK = 32  # numpy's own limit is 64; no real model comes near either
MAX_NESTING = 64


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: Datatype
    shape: tuple[int, ...]
    array: np.ndarray


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0  # Triton's classification extension: top-k labels, 0 = off


@dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None  # None: every output of the model
    binary_output: bool  # request-level `binary_data_output`
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout_us(self) -> int | None:
        """Triton's per-request `timeout` parameter, in microseconds."""
        return timeout_us({"parameters": self.parameters})


@dataclass(slots=True)
class OutputTensor:
    name: str
    array: np.ndarray
    binary: bool


def decode_request(body: bytes, header_length: int | None) -> InferRequest:
    """Parse a request body; `header_length` is `Inference-Header-Content-Length` when present."""
    header = parse_header(body, header_length)
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    return build_request(header, binary)


def parse_header(body: bytes, header_length: int | None) -> dict[str, Any]:
    """Only the JSON part of a request: enough to route it without touching tensor data."""
    if header_length is None:
        return _parse_json(body)
    if header_length < 0 or header_length > len(body):
        raise MalformedBody(
            f"Inference-Header-Content-Length {header_length} is outside the body "
            f"of {len(body)} bytes"
        )
    return _parse_json(memoryview(body)[:header_length])


def timeout_us(header: dict[str, Any]) -> int | None:
    """Triton's per-request `timeout` parameter, in microseconds."""
    params = header.get("parameters")
    value = params.get("timeout") if isinstance(params, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def with_timeout(header: dict[str, Any], micros: int) -> bytes:
    """The JSON header again, its `parameters.timeout` set to what remains of the budget."""
    params = header.get("parameters")
    params = dict(params) if isinstance(params, dict) else {}
    params["timeout"] = micros
    return orjson.dumps({**header, "parameters": params})


def _parse_json(raw: bytes | memoryview) -> dict[str, Any]:
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if is_depth_error(exc):
            raise MalformedBody(TOO_DEEP) from None
        raise MalformedBody(f"request body is not valid JSON: {_json_reason(exc)}") from None
    if not isinstance(header, dict):
        raise MalformedBody("request body must be a JSON object")
    check_depth(raw, header)
    return header


def _json_reason(exc: orjson.JSONDecodeError) -> str:
    # orjson's message names the position only; it never quotes the document itself.
    return f"{exc.msg} at line {exc.lineno} column {exc.colno}"


def build_request(header: dict[str, Any], binary: memoryview) -> InferRequest:
    """Typed tensors from a parsed header and the binary part of the body."""
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MalformedBody("'id' must be a string")
    parameters = _mapping(header.get("parameters"), "parameters")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise MalformedBody("'inputs' must be a non-empty list")
    inputs, offset = [], 0
    for raw in raw_inputs:
        tensor, offset = _input(raw, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise MalformedBody(
            f"binary data is {len(binary)} bytes but the inputs declare {offset} (binary_data_size)"
        )
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise MalformedBody("an input name appears more than once")
    binary_output = parameters.get("binary_data_output") is True
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=_requested_outputs(header.get("outputs"), binary_output),
        binary_output=binary_output,
        parameters=parameters,
    )


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedBody(f"'{where}' must be an object")
    return value


def _input(raw: Any, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    if not isinstance(raw, dict):
        raise MalformedBody("each entry of 'inputs' must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedBody("each input needs a non-empty string 'name'")
    datatype = _datatype(raw.get("datatype"), name)
    shape = _shape(raw.get("shape"), name)
    params = _mapping(raw.get("parameters"), f"inputs[{name}].parameters")
    if "shared_memory_region" in params:
        raise InvalidTensor(f"input '{name}': the shared-memory extension is not supported")
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in raw:
            raise MalformedBody(f"input '{name}' has both 'data' and binary_data_size")
        if not _count(size) or offset + size > len(binary):
            raise MalformedBody(f"input '{name}': binary_data_size does not fit the body")
        chunk = binary[offset : offset + size]
        return InputTensor(name, datatype, shape, _from_binary(name, datatype, shape, chunk)), (
            offset + size
        )
    if "data" not in raw:
        raise MalformedBody(f"input '{name}' has no 'data' and no binary_data_size")
    return InputTensor(
        name, datatype, shape, _from_json(name, datatype, shape, raw["data"])
    ), offset


def _datatype(value: Any, name: str) -> Datatype:
    datatype = BY_NAME.get(value) if isinstance(value, str) else None
    if datatype is None:
        known = ", ".join(BY_NAME)
        raise InvalidTensor(f"input '{name}': datatype must be one of {known}")
    return datatype


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise InvalidTensor(f"input '{name}': 'shape' must be a list of non-negative integers")
    if len(value) > MAX_RANK:
        raise InvalidTensor(f"input '{name}': more than {MAX_RANK} dimensions")
    return tuple(value)


def _from_json(name: str, dt: Datatype, shape: tuple[int, ...], data: Any) -> np.ndarray:
    count = math.prod(shape)
    if dt.is_bytes:
        flat = list(_flatten(name, data))
        if not all(isinstance(item, str) for item in flat):
            raise InvalidTensor(f"input '{name}': BYTES data must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        array = _numeric(name, dt, data)
    if array.size != count:
        raise InvalidTensor(
            f"input '{name}': shape {list(shape)} needs {count} elements, got {array.size}"
        )
    return array.reshape(shape)


def _numeric(name: str, dt: Datatype, data: Any) -> np.ndarray:
    if dt.numpy.kind == "f":
        return _floats(name, dt, data)
    try:
        array = np.asarray(data)
    except (ValueError, RecursionError):
        raise InvalidTensor(f"input '{name}': 'data' is not a regular array") from None
    if array.size == 0:
        return np.empty(0, dtype=dt.numpy)
    if dt.numpy.kind in "iu" and array.dtype.kind in "fO":
        # Integers past 2**63 make numpy fall back to float64 or objects: convert them exactly.
        array = _exact_integers(name, dt, data)
    if array.dtype.kind not in dt.kinds:
        raise InvalidTensor(f"input '{name}': 'data' does not hold {dt.name} values")
    if dt.numpy.kind in "iu":
        info = np.iinfo(dt.numpy)  # type: ignore[type-var]
        if array.min() < info.min or array.max() > info.max:
            raise InvalidTensor(f"input '{name}': a value is out of range for {dt.name}")
        return array.astype(dt.numpy, copy=False)
    return array.astype(dt.numpy, copy=False)  # BOOL


def _floats(name: str, dt: Datatype, data: Any) -> np.ndarray:
    """The hot path (FP32 inputs): one conversion straight to the wire type."""
    try:
        with np.errstate(over="ignore"):
            array = np.asarray(data, dtype=dt.numpy)
    except (ValueError, TypeError, RecursionError):
        raise InvalidTensor(
            f"input '{name}': 'data' is not a regular array of {dt.name} values"
        ) from None
    if not np.isfinite(array).all():
        raise InvalidTensor(f"input '{name}': a value is out of range for {dt.name}")
    return array


def _exact_integers(name: str, dt: Datatype, data: Any) -> np.ndarray:
    flat = list(_flatten(name, data))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        raise InvalidTensor(f"input '{name}': 'data' does not hold {dt.name} values")
    info = np.iinfo(dt.numpy)  # type: ignore[type-var]
    if any(v < info.min or v > info.max for v in flat):
        raise InvalidTensor(f"input '{name}': a value is out of range for {dt.name}")
    return np.array(flat, dtype=dt.numpy)


def _flatten(name: str, data: Any) -> Iterable[Any]:
    """Leaves of nested lists, depth-first, without recursion (the depth is the client's)."""
    stack = [(iter([data]), 0)]
    while stack:
        items, depth = stack[-1]
        item = next(items, _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            if depth >= MAX_NESTING:
                raise InvalidTensor(f"input '{name}': 'data' is nested too deeply")
            stack.append((iter(item), depth + 1))
        else:
            yield item


_END = object()


def _from_binary(name: str, dt: Datatype, shape: tuple[int, ...], raw: memoryview) -> np.ndarray:
    count = math.prod(shape)
    if dt.is_bytes:
        return _bytes_elements(name, raw, count).reshape(shape)
    expected = count * dt.numpy.itemsize
    if len(raw) != expected:
        raise InvalidTensor(
            f"input '{name}': shape {list(shape)} of {dt.name} needs {expected} bytes, "
            f"got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dt.numpy).reshape(shape)


def _bytes_elements(name: str, raw: memoryview, count: int) -> np.ndarray:
    if count * 4 > len(raw):  # every element has a 4-byte length: refuse before allocating
        raise InvalidTensor(f"input '{name}': BYTES data is too short for {count} elements")
    array = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise InvalidTensor(f"input '{name}': BYTES data ends before element {i}")
        (length,) = _U32.unpack_from(raw, offset)
        start, offset = offset + 4, offset + 4 + length
        if offset > len(raw):
            raise InvalidTensor(f"input '{name}': BYTES element {i} runs past the data")
        try:
            array[i] = bytes(raw[start:offset]).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidTensor(f"input '{name}': BYTES element {i} is not UTF-8") from None
    if offset != len(raw):
        raise InvalidTensor(f"input '{name}': BYTES data holds more than {count} elements")
    return array


def _requested_outputs(value: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise MalformedBody("'outputs' must be a list")
    outputs = []
    for raw in value:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise MalformedBody("each entry of 'outputs' must be an object with a 'name'")
        params = _mapping(raw.get("parameters"), f"outputs[{raw['name']}].parameters")
        if "shared_memory_region" in params:
            raise InvalidTensor(
                f"output '{raw['name']}': the shared-memory extension is not supported"
            )
        binary = params.get("binary_data", binary_default)
        top_k = params.get("classification", 0)
        if not isinstance(binary, bool) or not _count(top_k):
            raise MalformedBody(
                f"output '{raw['name']}': binary_data must be a boolean and "
                "classification a non-negative integer"
            )
        outputs.append(RequestedOutput(raw["name"], binary, top_k))
    return outputs


def _count(value: Any) -> bool:
    """A non-negative integer, where JSON's true/false must not pass for 1/0."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def classify(array: np.ndarray, top_k: int, labels: tuple[str, ...]) -> np.ndarray:
    """Triton's classification extension: "score:index[:label]" strings, best first, per row."""
    scores = np.asarray(array, dtype=np.float64)
    if scores.ndim == 0:
        raise InvalidTensor("classification needs an output with at least one dimension")
    k = min(top_k, scores.shape[-1])
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    picked = np.take_along_axis(scores, order, axis=-1)
    out = np.empty(order.shape, dtype=object)
    for pos in np.ndindex(order.shape):
        index = int(order[pos])
        label = f":{labels[index]}" if index < len(labels) else ""
        out[pos] = f"{picked[pos]:f}:{index}{label}"
    return out


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
    return flat


def _text(item: Any) -> str:
    return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)


def _to_binary(array: np.ndarray, dt: Datatype) -> bytes:
    if not dt.is_bytes:
        return np.ascontiguousarray(array, dtype=dt.numpy).tobytes()
    parts = []
    for item in array.ravel():
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts += [_U32.pack(len(raw)), raw]
    return b"".join(parts)
