"""A KServe v2 request's binary tensors that detection must read, moved into its JSON header,
so the privacy scanner reads them as it reads the same request sent as JSON, and redaction can
rewrite them before the request leaves the site.

tritonclient sends inputs in the binary extension by default. BYTES elements are text the
scanner must see like any JSON string. Integer elements are digits the walker scans like JSON
numbers (a card or phone number sent as INT64), and so are FP32/FP64 elements, as the integer
part their JSON form is written with (a card number is exact in FP64): a tensor holding one
large enough to be an entity is inlined whole, as its JSON form, so the same request gets the
same verdict and the same redacted view whichever encoding the client chose. Tensors with no
such element (found by one vectorised pass: the common float tensor costs a min and a max)
and every bool, FP16 or narrow integer tensor stay binary, as the JSON walk leaves their
JSON form alone. The protocol lets each
input be JSON or binary, so the inlined request (the same inputs, those tensors now as JSON
`data`, the other binary tensors' bytes kept in order) is one any v2 server accepts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router.errors import DetectionFailed, InvalidTensor
from router.redaction.numbers import FLOAT_DIGITS_END, MIN_SCANNED_FRACTIONAL, MIN_SCANNED_INT
from router.v2.datatypes import BY_NAME, Datatype
from router.v2.tensors import from_binary

BYTES = BY_NAME["BYTES"]
# Integer types whose range reaches MIN_SCANNED_INT: narrower ones can hold no entity.
SCANNED_INTEGERS = frozenset(
    name
    for name, dt in BY_NAME.items()
    if dt.numpy.kind in "iu" and np.iinfo(dt.numpy).max >= MIN_SCANNED_INT  # type: ignore[type-var]
)
# Float types whose range reaches MIN_SCANNED_INT (not FP16): large elements are scanned.
SCANNED_FLOATS = frozenset(
    name
    for name, dt in BY_NAME.items()
    if dt.numpy.kind == "f" and float(np.finfo(dt.numpy).max) >= MIN_SCANNED_INT  # type: ignore[type-var]
)
# Per float type, the magnitude below which its elements are scanned: FP64 as far as its JSON
# form writes every integer digit (numbers.FLOAT_DIGITS_END; past 2**53 it still holds the even
# integers exactly, a 16-digit card among them); FP32 only as far as it holds every integer
# exactly (2**24): past it its elements (all integral there) carry no digits a client wrote,
# and a tensor of large readings is no run of numbers to scan.
_SCANNED_BELOW = {
    name: FLOAT_DIGITS_END
    if np.finfo(BY_NAME[name].numpy).nmant >= 52  # type: ignore[type-var]
    else 2.0 ** (np.finfo(BY_NAME[name].numpy).nmant + 1)  # type: ignore[type-var]
    for name in SCANNED_FLOATS
}
SCANNED_BINARY = SCANNED_INTEGERS | SCANNED_FLOATS | {"BYTES"}
# Types whose elements the JSON walk would not scan either (FP16, bools, narrow integers),
# and BF16, a float type Triton's binary extension carries (and numpy cannot read). A binary
# tensor of any other datatype cannot be read as what it is: it is refused as Unreadable,
# never sent on unread.
UNSCANNED_BINARY = frozenset(BY_NAME).difference(SCANNED_BINARY) | {"BF16"}


def holds_scanned_binary(document: dict[str, Any] | None) -> bool:
    """A v2 request with tensors in the binary part that detection must read: BYTES,
    integers or floats wide enough to hold an entity's digits, or a datatype no v2 server
    knows."""
    inputs = document.get("inputs") if document is not None else None
    for tensor in inputs if isinstance(inputs, list) else ():
        if not isinstance(tensor, dict):
            continue
        params = tensor.get("parameters")
        binary = isinstance(params, dict) and "binary_data_size" in params
        datatype = tensor.get("datatype")
        if binary and not (isinstance(datatype, str) and datatype in UNSCANNED_BINARY):
            return True
    return False


def binary_accounted_for(document: dict[str, Any] | None, size: int) -> bool:
    """Whether the inputs' binary_data_size values add up to the binary part's `size`: bytes
    no well-formed input declares are read by no scan, so such a request must be read
    tensor by tensor (and is refused as Unreadable) before any of it may leave."""
    inputs = document.get("inputs") if document is not None else None
    if not isinstance(inputs, list):
        return size == 0
    declared = 0
    for tensor in inputs:
        tensor_size = _binary_size(tensor)
        if tensor_size is not None:
            if tensor_size < 0:
                return False
            declared += tensor_size
    return declared == size


class Unreadable(Exception):
    """The binary part cannot be read tensor by tensor (sizes that do not add up, elements
    that are not UTF-8, shapes that do not fit, a tensor with JSON `data` too): such a
    request stays unscanned."""


def inline_binary_tensors(
    document: dict[str, Any], binary: memoryview
) -> tuple[dict[str, Any], bytes] | None:
    """(header, binary part) with every binary BYTES input, and every binary integer or
    float input holding an element the JSON walk scans, inlined as JSON `data`; None when nothing
    needed inlining (detection then reads the request as it is). Raises Unreadable."""
    inputs = document.get("inputs")
    if not isinstance(inputs, list):
        raise Unreadable
    rewritten, kept, offset, inlined = [], [], 0, False
    for tensor in inputs:
        size = _binary_size(tensor)
        if size is None:
            rewritten.append(tensor)
            continue
        if not 0 <= size <= len(binary) - offset or "data" in tensor:
            # JSON `data` beside binary bytes: a scan of one would vouch for the other.
            raise Unreadable
        chunk, offset = binary[offset : offset + size], offset + size
        elements = _scanned_elements(tensor, chunk)
        if elements is None:
            rewritten.append(tensor)
            kept.append(chunk)
            continue
        rewritten.append(_as_json(tensor, elements))
        inlined = True
    if offset != len(binary):
        raise Unreadable
    if not inlined:
        return None
    return {**document, "inputs": rewritten}, b"".join(kept)


def _binary_size(tensor: Any) -> int | None:
    params = tensor.get("parameters") if isinstance(tensor, dict) else None
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def _scanned_elements(tensor: dict[str, Any], chunk: memoryview) -> list[Any] | None:
    """The elements detection must read, flat, as the JSON walk would see them; None for a
    tensor it would not scan (bools, FP16, numbers none of which could hold an entity)."""
    name = tensor.get("datatype")
    if not isinstance(name, str) or name not in SCANNED_BINARY:
        if isinstance(name, str) and name in UNSCANNED_BINARY:
            return None
        raise Unreadable  # no datatype a v2 server knows: its bytes cannot be read as one
    array = _array(tensor, BY_NAME[name], chunk).ravel()
    if name in SCANNED_INTEGERS and not _holds_large(array):
        return None
    if name in SCANNED_FLOATS and not _holds_scanned_float(array, _SCANNED_BELOW[name]):
        return None
    elements: list[Any] = array.tolist()  # Python str, int or float: exact, even past 2**63
    return elements


def _array(tensor: dict[str, Any], dt: Datatype, chunk: memoryview) -> np.ndarray:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise Unreadable
    try:
        return from_binary(str(tensor.get("name")), dt, tuple(shape), chunk)
    except InvalidTensor:
        raise Unreadable from None


def _holds_large(array: np.ndarray) -> bool:
    """Whether an element has MIN_SCANNED_INT or more in magnitude (what the walk scans),
    vectorised: most integer tensors (token ids, indices, counts) hold none. min and max
    rather than abs, which overflows on the most negative int64."""
    if array.size == 0:
        return False
    return bool(array.max() >= MIN_SCANNED_INT or array.min() <= -MIN_SCANNED_INT)


def _holds_scanned_float(array: np.ndarray, below: float) -> bool:
    """Whether a float element is one the JSON walk scans (numbers.scanned_float: integral, or
    of 12 digits with a fraction) within the type's scanned range (below `below`), vectorised.
    Most float tensors (activations, pixels, embeddings) stay within MIN_SCANNED_INT either
    way: a min and a max tell, with no copy; only then are magnitudes looked at."""
    if array.size == 0:
        return False
    if array.max() < MIN_SCANNED_INT and array.min() > -MIN_SCANNED_INT:
        return False  # (NaN compares false: such a tensor is looked at element by element)
    magnitude = np.abs(array)
    large = magnitude[(magnitude >= MIN_SCANNED_INT) & (magnitude < below)]
    return bool(((large >= MIN_SCANNED_FRACTIONAL) | (np.floor(large) == large)).any())


def _as_json(tensor: dict[str, Any], elements: list[Any]) -> dict[str, Any]:
    params = {k: v for k, v in tensor["parameters"].items() if k != "binary_data_size"}
    inlined = {k: v for k, v in tensor.items() if k != "parameters"}
    if params:
        inlined["parameters"] = params
    inlined["data"] = elements
    return inlined


def rebinarised(
    original: dict[str, Any],
    binary: memoryview,
    inlined: tuple[dict[str, Any], bytes],
    redacted: Any,
) -> tuple[Any, bytes]:
    """A redacted view of an inlined request, with every inlined tensor that redaction left
    as it was put back in its binary form, original bytes and all: only a tensor something
    was redacted from goes upstream as JSON. (redacted, the other binary tensors' bytes) as
    they are when the inputs no longer line up one to one (a drop rule removed one)."""
    header, kept = inlined
    before, during = original.get("inputs"), header.get("inputs")
    after = redacted.get("inputs") if isinstance(redacted, dict) else None
    if not (
        isinstance(before, list)
        and isinstance(during, list)
        and isinstance(after, list)
        and len(before) == len(during) == len(after)
    ):
        for read in during if isinstance(during, list) else ():
            _check_json_can_carry(read)
        return redacted, kept
    inputs, chunks, offset = [], [], 0
    for sent, read, left in zip(before, during, after, strict=True):
        size = _binary_size(sent)
        if size is None:
            inputs.append(left)
            continue
        chunk, offset = binary[offset : offset + size], offset + size
        if read is sent:  # binary all along: its bytes go as they came
            inputs.append(left)
            chunks.append(chunk)
        elif left == read:  # inlined for detection, nothing redacted: back to its bytes
            inputs.append(sent)
            chunks.append(chunk)
        else:
            _check_json_can_carry(read)
            inputs.append(left)
    return {**redacted, "inputs": inputs}, b"".join(chunks)


def _check_json_can_carry(tensor: Any) -> None:
    """Raises DetectionFailed for an inlined float tensor holding NaN or an infinity: redacted,
    it must go as JSON, which has no such numbers (orjson would write null in their place)."""
    if not isinstance(tensor, dict) or tensor.get("datatype") not in SCANNED_FLOATS:
        return
    data = tensor.get("data")
    if isinstance(data, list) and not np.isfinite(np.asarray(data, dtype=np.float64)).all():
        raise DetectionFailed(
            "a binary float tensor something was redacted from holds NaN or Infinity, which its "
            "JSON form cannot carry, so the request may not leave this site"
        )
