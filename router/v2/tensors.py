"""Turn one input's `data` (nested JSON lists) or its binary-extension chunk into a numpy array
of the declared datatype and shape, refusing anything that does not fit exactly.

Error messages name the input and the problem, never a value: the values are the client's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import chain
from typing import Any

import numpy as np

from router.errors import InvalidTensor
from router.v2.datatypes import BYTES_LENGTH, Datatype

MAX_NESTING = 64


def from_json(name: str, dt: Datatype, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """An input's JSON `data`, flat or nested, as an array of `dt` in `shape`."""
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
    return _shaped(name, array, shape)


def _shaped(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """numpy refuses dimensions past its index range even when another one is 0."""
    try:
        return array.reshape(shape)
    except ValueError:
        raise InvalidTensor(f"input '{name}': shape {list(shape)} is too large") from None


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
    if array.dtype.kind not in dt.kinds or (dt.numpy.kind in "iu" and _holds_bool(data, array)):
        raise InvalidTensor(f"input '{name}': 'data' does not hold {dt.name} values")
    if dt.numpy.kind in "iu":
        info = np.iinfo(dt.numpy)  # type: ignore[type-var]
        if array.min() < info.min or array.max() > info.max:
            raise InvalidTensor(f"input '{name}': a value is out of range for {dt.name}")
        return array.astype(dt.numpy, copy=False)
    return array.astype(dt.numpy, copy=False)  # BOOL


def _floats(name: str, dt: Datatype, data: Any) -> np.ndarray:
    """The hot path (FP32 inputs). numpy's own conversion straight to a float type would parse
    "1.5" and take true as 1.0, so the values' kind is checked on the way (a float64 or int64
    array: JSON numbers), then narrowed."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, RecursionError):
        raise InvalidTensor(
            f"input '{name}': 'data' is not a regular array of {dt.name} values"
        ) from None
    if array.dtype.kind not in "iuf":
        if array.dtype.kind != "O":  # strings, or nothing but booleans
            raise InvalidTensor(f"input '{name}': 'data' does not hold {dt.name} values")
        array = _huge_numbers(name, dt, array)  # integers past 2**64 make numpy use objects
    elif _holds_bool(data, array):
        raise InvalidTensor(f"input '{name}': 'data' does not hold {dt.name} values")
    with np.errstate(over="ignore"):
        array = array.astype(dt.numpy, copy=False)
    if not np.isfinite(array).all():
        raise InvalidTensor(f"input '{name}': a value is out of range for {dt.name}")
    return array


def _holds_bool(data: Any, array: np.ndarray) -> bool:
    """Whether a JSON true or false sits among numbers, which numpy read as 1 or 0 into an
    int or float array (only all-boolean data gives a bool array). `array` is numpy's reading
    of `data`, so its leaves are at depth `array.ndim`: walked at C speed, no Python loop."""
    leaves = data if array.ndim else [data]
    for _ in range(array.ndim - 1):
        leaves = chain.from_iterable(leaves)
    return bool in map(type, leaves)


def _huge_numbers(name: str, dt: Datatype, array: np.ndarray) -> np.ndarray:
    flat = array.ravel().tolist()
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        raise InvalidTensor(f"input '{name}': 'data' does not hold {dt.name} values")
    try:
        return np.array(flat, dtype=np.float64).reshape(array.shape)
    except OverflowError:
        raise InvalidTensor(f"input '{name}': a value is out of range for {dt.name}") from None


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


def from_binary(
    name: str, dt: Datatype, shape: tuple[int, ...], raw: memoryview, *, text: bool = True
) -> np.ndarray:
    """An input's binary-extension chunk as an array of `dt` in `shape` (a view, except BYTES).
    BYTES elements are decoded as UTF-8 (all an onnxruntime string tensor holds) unless `text`
    is False: the protocol itself allows any bytes, and an upstream may take them."""
    count = math.prod(shape)
    if dt.is_bytes:
        return _shaped(name, _bytes_elements(name, raw, count, text), shape)
    expected = count * dt.numpy.itemsize
    if len(raw) != expected:
        raise InvalidTensor(
            f"input '{name}': shape {list(shape)} of {dt.name} needs {expected} bytes, "
            f"got {len(raw)}"
        )
    return _shaped(name, np.frombuffer(raw, dtype=dt.numpy), shape)


def _bytes_elements(name: str, raw: memoryview, count: int, text: bool) -> np.ndarray:
    if count * 4 > len(raw):  # every element has a 4-byte length: refuse before allocating
        raise InvalidTensor(f"input '{name}': BYTES data is too short for {count} elements")
    array = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise InvalidTensor(f"input '{name}': BYTES data ends before element {i}")
        (length,) = BYTES_LENGTH.unpack_from(raw, offset)
        start, offset = offset + 4, offset + 4 + length
        if offset > len(raw):
            raise InvalidTensor(f"input '{name}': BYTES element {i} runs past the data")
        if not text:
            array[i] = bytes(raw[start:offset])
            continue
        try:
            array[i] = bytes(raw[start:offset]).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidTensor(f"input '{name}': BYTES element {i} is not UTF-8") from None
    if offset != len(raw):
        raise InvalidTensor(f"input '{name}': BYTES data holds more than {count} elements")
    return array
