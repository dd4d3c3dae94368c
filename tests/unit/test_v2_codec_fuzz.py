"""S1: decode_request answers any input with an InferRequest or a RouterError, nothing else.

Known crashers found earlier (too many dimensions, BYTES data nested past the recursion limit,
a BYTES element count too large to allocate) are regression cases in test_v2_codec.py; the
strategies here keep shapes small so a run never tries to allocate gigabytes.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from router.errors import RouterError
from router.v2.datatypes import BY_NAME
from router.v2.request import InferRequest, decode_request

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DATATYPES = list(BY_NAME)  # every protocol datatype, from the codec's own table

# Everything orjson can write: integers are limited to what it accepts (i64 and u64).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)


def _check(result: InferRequest) -> None:
    """When decoding succeeds, every tensor has exactly its declared shape."""
    assert isinstance(result, InferRequest)
    for tensor in result.inputs:
        assert tensor.array.shape == tensor.shape
        assert tensor.array.size == math.prod(tensor.shape)


def _decode_or_router_error(body: bytes, header_length: int | None) -> None:
    try:
        result = decode_request(body, header_length)
    except RouterError as exc:
        event(f"rejected: {exc.code}")  # shown by --hypothesis-show-statistics
        status = exc.status
    else:
        event("decoded")
        _check(result)
        return
    assert status == 400


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` 19 times in 20: a request with one broken field still reaches deep checks."""
    return st.integers(0, 19).flatmap(lambda roll: bad if roll == 0 else good)


# A dimension is mostly a small count, sometimes something that is not a count at all.
dimension = mostly(
    st.integers(min_value=0, max_value=4),
    st.sampled_from([-1, True, 1.5, "2", None, [1]]),
)
# Never an arbitrary JSON list here: a shape of big integers would ask for a huge allocation.
shapes = mostly(st.lists(dimension, max_size=3), json_scalars)
datatypes = mostly(st.sampled_from(DATATYPES), st.text(max_size=6) | json_scalars)


def _count(shape: Any) -> int | None:
    if isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape):
        return math.prod(shape)
    return None


def _itemsize(datatype: str) -> int:
    if datatype.startswith("FP"):
        return int(datatype[2:]) // 8
    if datatype.startswith(("UINT", "INT")):
        return int(datatype.removeprefix("U").removeprefix("INT")) // 8
    return 1


@st.composite
def element_data(draw: st.DrawFn, datatype: Any, shape: Any) -> Any:
    """JSON `data` that mostly has the right element count and type, and sometimes not."""
    count = _count(shape) or 0
    size = draw(mostly(st.just(count), st.sampled_from([max(count - 1, 0), count + 1])))
    element: st.SearchStrategy[Any]
    if datatype == "BYTES":
        element = st.text(max_size=8)
    elif datatype == "BOOL":
        element = st.booleans()
    elif isinstance(datatype, str) and datatype.startswith(("UINT", "INT")):
        bits = _itemsize(datatype) * 8
        low = 0 if datatype.startswith("U") else -(2 ** (bits - 1))
        high = 2**bits - 1 if datatype.startswith("U") else 2 ** (bits - 1) - 1
        element = mostly(st.integers(low, high), st.integers(-(2**63), 2**64 - 1))
    else:
        element = st.floats(allow_nan=False, allow_infinity=False, width=32)
    if draw(st.integers(0, 9)) == 0:  # the odd stray value among good ones
        element = mostly(element, json_scalars)
    flat = draw(st.lists(element, min_size=size, max_size=size))
    if draw(st.booleans()) and isinstance(shape, list) and shape and _count(shape):
        rows = shape[0]
        step = max(1, len(flat) // rows)
        return [flat[i : i + step] for i in range(0, len(flat), step)]
    return flat


@st.composite
def binary_payload(draw: st.DrawFn, datatype: str, shape: Any) -> bytes:
    """Bytes for a binary input: mostly the right size, with lying lengths for BYTES."""
    count = _count(shape)
    if count is None or not draw(mostly(st.just(True), st.just(False))):
        count = draw(st.integers(min_value=0, max_value=12))
    if datatype == "BYTES":
        items = draw(
            st.lists(
                st.text(max_size=6).map(str.encode) | st.binary(max_size=6),
                min_size=count,
                max_size=count,
            )
        )
        lie = draw(mostly(st.just(0), st.integers(min_value=-2, max_value=2)))
        return b"".join(struct.pack("<I", max(0, len(item) + lie)) + item for item in items)
    size = count * _itemsize(datatype)
    return bytes(
        draw(mostly(st.binary(min_size=size, max_size=size), st.binary(max_size=size + 2)))
    )


@st.composite
def tensor_entry(draw: st.DrawFn, name: str) -> tuple[dict[str, Any], bytes]:
    """One input entry (JSON or binary) and the binary bytes it contributes."""
    datatype = draw(datatypes)
    shape = draw(shapes)
    entry: dict[str, Any] = {"name": draw(mostly(st.just(name), json_scalars))}
    if draw(st.integers(0, 19)):
        entry["datatype"] = datatype
    if draw(st.integers(0, 19)):
        entry["shape"] = shape
    chunk = b""
    if draw(st.booleans()) and datatype in DATATYPES:
        chunk = draw(binary_payload(datatype, shape))
        size = draw(mostly(st.just(len(chunk)), st.sampled_from([len(chunk) + 1, -1, "8"])))
        entry["parameters"] = {"binary_data_size": size}
        if draw(st.integers(0, 19)) == 0:
            entry["data"] = [1]
    else:
        entry["data"] = draw(element_data(datatype, shape))
        if draw(st.integers(0, 19)) == 0:
            entry["parameters"] = draw(json_values)
    return entry, chunk


output_parameters = st.fixed_dictionaries(
    {},
    optional={
        "binary_data": mostly(st.booleans(), json_scalars),
        "classification": mostly(st.integers(0, 5), json_scalars),
    },
)
outputs = st.lists(
    st.fixed_dictionaries(
        {"name": mostly(st.sampled_from(["y", "z"]), json_scalars)},
        optional={"parameters": mostly(output_parameters, json_values)},
    ),
    max_size=3,
)
request_parameters = st.fixed_dictionaries(
    {},
    optional={
        "binary_data_output": mostly(st.booleans(), json_scalars),
        "timeout": mostly(st.integers(1, 10**6), json_scalars),
    },
)


@st.composite
def request_body(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """A body shaped like a v2 request, mostly valid, so decoding reaches every check."""
    count = draw(mostly(st.integers(1, 3), st.sampled_from([0, 2])))
    names = [f"in{i}" for i in range(count)]
    if count and draw(st.integers(0, 19)) == 0:
        names[-1] = names[0]  # a duplicate name
    entries = [draw(tensor_entry(name)) for name in names]
    doc: dict[str, Any] = {"inputs": [e for e, _ in entries]}
    if draw(st.booleans()):
        doc["id"] = draw(mostly(st.text(max_size=8), json_scalars))
    if draw(st.booleans()):
        doc["parameters"] = draw(mostly(request_parameters, json_values))
    if draw(st.booleans()):
        doc["outputs"] = draw(mostly(outputs, json_values))
    header = orjson.dumps(doc)
    binary = b"".join(chunk for _, chunk in entries)
    binary += draw(mostly(st.just(b""), st.binary(min_size=1, max_size=4)))
    if not binary and draw(st.booleans()):
        return header, None
    length = draw(mostly(st.just(len(header)), st.integers(-3, len(header) + len(binary) + 3)))
    return header + binary, length


class TestDecodeRequestFuzz:
    @FUZZ
    @given(body=st.binary(max_size=256), header_length=st.none() | st.integers(-8, 300))
    @example(body=b"", header_length=None)
    @example(body=b"\xef\xbb\xbf{}", header_length=None)
    @example(body=b'{"inputs": [{}]}' + b"\0" * 4, header_length=16)
    def test_arbitrary_bytes(self, body: bytes, header_length: int | None) -> None:
        """Any byte string and header length yields a request or a RouterError."""
        _decode_or_router_error(body, header_length)

    @FUZZ
    @given(doc=json_values)
    def test_arbitrary_json(self, doc: Any) -> None:
        """Any JSON document yields a request or a RouterError."""
        _decode_or_router_error(orjson.dumps(doc), None)

    @FUZZ
    @given(case=request_body())
    @example(case=(b'{"inputs":[{"name":"x","datatype":"UINT8","shape":[],"data":true}]}', None))
    @example(case=(b'{"inputs":[{"name":"x","datatype":"BOOL","shape":[1],"data":1}]}', None))
    @example(case=(b'{"inputs":[{"name":"x","datatype":"FP16","shape":[1],"data":[1e300]}]}', None))
    def test_request_shaped_json(self, case: tuple[bytes, int | None]) -> None:
        """Request-shaped documents with wrong or lying fields yield a request or a RouterError."""
        body, header_length = case
        _decode_or_router_error(body, header_length)
