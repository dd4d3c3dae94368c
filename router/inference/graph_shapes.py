"""Which of a model's graph inputs and outputs have no rank at all, read from the ONNX file.

onnxruntime reports a tensor of unknown rank (its type has no `shape`) and a scalar (a shape
of no dimensions) alike, as `[]`; only the graph tells them apart. The `onnx` package is no
runtime dependency, so the few fields needed are read straight off protobuf's wire format
(https://protobuf.dev/programming-guides/encoding/), skipping everything else (weights
included) by length without copying it:

    ModelProto.graph = 7 → GraphProto.input = 11, .output = 12 → ValueInfoProto.name = 1,
    .type = 2 → TypeProto.tensor_type = 1 → TypeProto.Tensor.shape = 2 (absent: no rank)
"""

from __future__ import annotations

from collections.abc import Iterator

_MODEL_GRAPH = 7
_GRAPH_INPUT, _GRAPH_OUTPUT = 11, 12
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_SHAPE = 2
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def unranked_tensors(model: bytes) -> frozenset[str]:
    """Names of the graph's inputs and outputs that are tensors without a shape; empty for
    bytes that are not a readable model (the session that loaded them decides that)."""
    try:
        return frozenset(_unranked(memoryview(model)))
    except ValueError:
        return frozenset()


def _unranked(model: memoryview) -> Iterator[str]:
    for field, graph in _messages(model):
        if field != _MODEL_GRAPH:
            continue
        for kind, value_info in _messages(graph):
            if kind in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                name = _no_shape_tensor(value_info)
                if name is not None:
                    yield name


def _no_shape_tensor(value_info: memoryview) -> str | None:
    """The value's name when its type is a tensor type without a shape."""
    name, tensor = None, None
    for field, part in _messages(value_info):
        if field == _VALUE_NAME:
            name = bytes(part).decode("utf-8", "replace")
        elif field == _VALUE_TYPE:
            tensor = next((t for f, t in _messages(part) if f == _TYPE_TENSOR), None)
    if name is None or tensor is None:
        return None
    return None if any(f == _TENSOR_SHAPE for f, _ in _messages(tensor)) else name


def _messages(buf: memoryview) -> Iterator[tuple[int, memoryview]]:
    """The length-delimited fields of one message (field number, bytes); others skipped."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, pos = _varint(buf, pos)
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _LENGTH:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ValueError("field runs past its message")
            yield field, buf[pos : pos + size]
            pos += size
        else:
            raise ValueError(f"wire type {wire} is not used by ONNX")
    if pos != end:
        raise ValueError("message ends inside a field")


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
