"""A KServe v2 request's binary BYTES tensors moved into its JSON header, so the privacy
scanner can read them and redaction can rewrite them before the request leaves the site.

tritonclient sends BYTES inputs in the binary extension by default; their elements are text
the scanner must see like any JSON string. The protocol lets each input be JSON or binary, so
the inlined request (the same inputs, those tensors now as JSON `data`, the other binary
tensors' bytes kept in order) is one any v2 server accepts.
"""

from __future__ import annotations

from typing import Any

from router.errors import InvalidTensor
from router.v2.datatypes import BY_NAME
from router.v2.tensors import from_binary

BYTES = BY_NAME["BYTES"]


def inline_binary_bytes(
    document: dict[str, Any], binary: memoryview
) -> tuple[dict[str, Any], bytes] | None:
    """(header, binary part) with every binary BYTES input inlined as JSON strings; None when
    the body cannot be read that way (sizes that do not add up, elements that are not
    UTF-8, shapes that do not fit): such a request stays unscanned, and so on the site."""
    inputs = document.get("inputs")
    if not isinstance(inputs, list):
        return None
    rewritten, kept, offset = [], [], 0
    for tensor in inputs:
        size = _binary_size(tensor)
        if size is None:
            rewritten.append(tensor)
            continue
        if not 0 <= size <= len(binary) - offset:
            return None
        chunk, offset = binary[offset : offset + size], offset + size
        if tensor.get("datatype") != "BYTES":
            rewritten.append(tensor)
            kept.append(chunk)
            continue
        strings = _strings(tensor, chunk)
        if strings is None:
            return None
        rewritten.append(_as_json(tensor, strings))
    if offset != len(binary):
        return None
    return {**document, "inputs": rewritten}, b"".join(kept)


def _binary_size(tensor: Any) -> int | None:
    params = tensor.get("parameters") if isinstance(tensor, dict) else None
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def _strings(tensor: dict[str, Any], chunk: memoryview) -> list[str] | None:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        return None
    try:
        array = from_binary(str(tensor.get("name")), BYTES, tuple(shape), chunk)
    except InvalidTensor:
        return None
    strings: list[str] = array.ravel().tolist()
    return strings


def _as_json(tensor: dict[str, Any], strings: list[str]) -> dict[str, Any]:
    params = {k: v for k, v in tensor["parameters"].items() if k != "binary_data_size"}
    inlined = {k: v for k, v in tensor.items() if k != "parameters"}
    if params:
        inlined["parameters"] = params
    inlined["data"] = strings
    return inlined
