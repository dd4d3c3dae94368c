"""The protocol's tensor datatypes and how they map onto numpy and onnxruntime."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Datatype:
    name: str  # the protocol's name, e.g. "FP32"
    numpy: np.dtype[np.generic]  # little-endian wire/array dtype; object for BYTES
    ort: str  # onnxruntime's element type, e.g. "tensor(float)"
    kinds: str  # numpy kinds accepted from JSON values (strictness without a per-element loop)

    @property
    def is_bytes(self) -> bool:
        return self.name == "BYTES"


def _dt(name: str, np_type: str, ort: str, kinds: str) -> Datatype:
    return Datatype(name, np.dtype(np_type), ort, kinds)


_ALL = (
    _dt("BOOL", "?", "tensor(bool)", "b"),
    _dt("UINT8", "<u1", "tensor(uint8)", "iu"),
    _dt("UINT16", "<u2", "tensor(uint16)", "iu"),
    _dt("UINT32", "<u4", "tensor(uint32)", "iu"),
    _dt("UINT64", "<u8", "tensor(uint64)", "iu"),
    _dt("INT8", "<i1", "tensor(int8)", "iu"),
    _dt("INT16", "<i2", "tensor(int16)", "iu"),
    _dt("INT32", "<i4", "tensor(int32)", "iu"),
    _dt("INT64", "<i8", "tensor(int64)", "iu"),
    _dt("FP16", "<f2", "tensor(float16)", "iuf"),
    _dt("FP32", "<f4", "tensor(float)", "iuf"),
    _dt("FP64", "<f8", "tensor(double)", "iuf"),
    _dt("BYTES", "O", "tensor(string)", "U"),
)

# Each BYTES element on the wire (binary extension): a little-endian 4-byte length, then the bytes.
BYTES_LENGTH = struct.Struct("<I")

BY_NAME: dict[str, Datatype] = {d.name: d for d in _ALL}
BY_ORT: dict[str, Datatype] = {d.ort: d for d in _ALL}
BY_NUMPY: dict[np.dtype[np.generic], Datatype] = {
    d.numpy.newbyteorder("="): d for d in _ALL if not d.is_bytes
}


def from_ort(ort_type: str) -> Datatype | None:
    """The protocol datatype for an onnxruntime element type; None when the protocol has none."""
    return BY_ORT.get(ort_type)


def of_array(array: np.ndarray) -> Datatype:
    """The protocol datatype of an output array (onnxruntime returns str objects for strings)."""
    if array.dtype.kind in "OUS":
        return BY_NAME["BYTES"]
    return BY_NUMPY[array.dtype.newbyteorder("=")]
