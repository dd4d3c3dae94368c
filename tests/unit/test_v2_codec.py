"""router/v2 request, tensors, response: decoding v2 requests (JSON and binary), encoding
responses, classify()."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest

from router.errors import InvalidTensor, MalformedBody, RouterError
from router.v2.request import (
    InferRequest,
    RequestedOutput,
    decode_request,
    parse_header,
    timeout_us,
    with_timeout,
)
from router.v2.response import OutputTensor, classify, encode_response

# Values that must never show up in an error message: they stand for a client's private data.
CANARY = "canary-5d1f0e7b"
CANARY_NUM = 31337
CANARIES = (CANARY, str(CANARY_NUM))


def _body(doc: Any) -> bytes:
    return orjson.dumps(doc)


def _decode(doc: Any) -> InferRequest:
    return decode_request(_body(doc), None)


def _with_binary(doc: dict[str, Any], *chunks: bytes) -> tuple[bytes, int]:
    """A binary-extension body: the JSON header followed by the raw chunks, and its length."""
    header = _body(doc)
    return header + b"".join(chunks), len(header)


def _bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _input(name: str, datatype: str, shape: list[Any], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _binary_input(name: str, datatype: str, shape: list[Any], size: Any) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }


# (datatype, values, numpy dtype): the extremes each type can carry.
DATATYPES = [
    ("BOOL", [True, False], np.bool_),
    ("UINT8", [0, 255], np.uint8),
    ("UINT16", [0, 65535], np.uint16),
    ("UINT32", [0, 2**32 - 1], np.uint32),
    ("UINT64", [0, 2**64 - 1], np.uint64),
    ("INT8", [-128, 127], np.int8),
    ("INT16", [-(2**15), 2**15 - 1], np.int16),
    ("INT32", [-(2**31), 2**31 - 1], np.int32),
    ("INT64", [-(2**63), 2**63 - 1], np.int64),
    ("FP16", [0.5, -2.0], np.float16),
    ("FP32", [1.5, -0.25], np.float32),
    ("FP64", [1e300, -1e-300], np.float64),
]

JSON_DATATYPES = DATATYPES


class TestDecodeJson:
    def test_flat_data_is_reshaped(self) -> None:
        """Flat `data` is laid out row-major into the declared shape."""
        request = _decode({"inputs": [_input("x", "FP32", [2, 2], [1, 2, 3, 4])]})
        (tensor,) = request.inputs
        assert tensor.name == "x"
        assert tensor.datatype.name == "FP32"
        assert tensor.shape == (2, 2)
        np.testing.assert_array_equal(tensor.array, np.array([[1, 2], [3, 4]], np.float32))

    def test_nested_data_equals_flat_data(self) -> None:
        """Nested `data` gives the same array as its flattened form."""
        nested = _decode({"inputs": [_input("x", "INT32", [2, 2], [[1, 2], [3, 4]])]})
        flat = _decode({"inputs": [_input("x", "INT32", [2, 2], [1, 2, 3, 4])]})
        np.testing.assert_array_equal(nested.inputs[0].array, flat.inputs[0].array)
        assert nested.inputs[0].array.shape == (2, 2)

    @pytest.mark.parametrize(("datatype", "values", "dtype"), JSON_DATATYPES)
    def test_every_numeric_datatype(self, datatype: str, values: list[Any], dtype: Any) -> None:
        """Each numeric datatype decodes to its numpy dtype, extremes included."""
        request = _decode({"inputs": [_input("x", datatype, [2], values)]})
        array = request.inputs[0].array
        assert array.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(array, np.array(values, dtype=dtype))

    def test_uint64_values_of_one_half(self) -> None:
        """UINT64 data decodes exactly while all values sit on one side of 2**63."""
        low = _decode({"inputs": [_input("x", "UINT64", [2], [0, 2**63 - 1])]})
        high = _decode({"inputs": [_input("x", "UINT64", [1], [2**64 - 1])]})
        assert low.inputs[0].array.tolist() == [0, 2**63 - 1]
        assert high.inputs[0].array.dtype == np.uint64
        assert high.inputs[0].array.tolist() == [2**64 - 1]

    def test_bytes_datatype(self) -> None:
        """BYTES data decodes to an object array of str, non-ASCII text included."""
        request = _decode({"inputs": [_input("s", "BYTES", [1, 3], ["a", "ü", ""])]})
        array = request.inputs[0].array
        assert array.dtype == object
        assert array.shape == (1, 3)
        assert array.tolist() == [["a", "ü", ""]]

    def test_integers_are_accepted_for_float_types(self) -> None:
        """JSON integers are valid FP32 values."""
        request = _decode({"inputs": [_input("x", "FP32", [2], [1, 2])]})
        assert request.inputs[0].array.dtype == np.float32

    def test_scalar_shape(self) -> None:
        """An empty shape holds exactly one element."""
        request = _decode({"inputs": [_input("x", "INT64", [], [7])]})
        assert request.inputs[0].array.shape == ()
        assert int(request.inputs[0].array) == 7

    def test_zero_sized_tensor(self) -> None:
        """A shape with a zero dimension takes empty data."""
        request = _decode({"inputs": [_input("x", "FP32", [0, 3], [])]})
        assert request.inputs[0].array.shape == (0, 3)
        assert request.inputs[0].array.dtype == np.float32

    def test_several_inputs_keep_their_order(self) -> None:
        """Inputs come back in the order the request lists them."""
        request = _decode(
            {"inputs": [_input("b", "FP32", [1], [1]), _input("a", "INT8", [1], [2])]}
        )
        assert [t.name for t in request.inputs] == ["b", "a"]

    def test_id_and_parameters(self) -> None:
        """`id` and request-level `parameters` are kept."""
        request = _decode(
            {
                "id": "req-1",
                "parameters": {"priority": 2, "note": "x"},
                "inputs": [_input("x", "FP32", [1], [1])],
            }
        )
        assert request.id == "req-1"
        assert request.parameters == {"priority": 2, "note": "x"}

    def test_id_and_parameters_absent(self) -> None:
        """Without `id`, `parameters` and `outputs` the request gets neutral defaults."""
        request = _decode({"inputs": [_input("x", "FP32", [1], [1])]})
        assert request.id is None
        assert request.parameters == {}
        assert request.outputs is None
        assert request.binary_output is False

    @pytest.mark.parametrize(("timeout", "expected"), [(2500, 2500), (0, None), (None, None)])
    def test_timeout_us(self, timeout: Any, expected: int | None) -> None:
        """A non-negative integer `timeout` parameter is a timeout in microseconds (0: none)."""
        request = _decode(
            {"parameters": {"timeout": timeout}, "inputs": [_input("x", "FP32", [1], [1])]}
        )
        assert request.timeout_us == expected

    @pytest.mark.parametrize("timeout", [-5, "100", "soon", 1.5, True, False, [1], {"a": 1}])
    def test_malformed_timeout_is_malformed_body(self, timeout: Any) -> None:
        """A `timeout` parameter that is not a non-negative integer makes the request a 400."""
        with pytest.raises(MalformedBody, match=r"parameters\.timeout"):
            _decode({"parameters": {"timeout": timeout}, "inputs": [_input("x", "FP32", [1], [1])]})


class TestHeaderHelpers:
    def test_parse_header_ignores_binary_part(self) -> None:
        """parse_header reads only the JSON part, whatever the binary part holds."""
        doc = {"inputs": [_binary_input("x", "FP32", [2], 8)], "id": "r"}
        body, length = _with_binary(doc, b"\xff" * 3)  # too short to decode as tensors
        assert parse_header(body, length) == doc

    def test_parse_header_json_only(self) -> None:
        """Without a header length the whole body is the JSON document."""
        assert parse_header(b'{"a": 1}', None) == {"a": 1}

    @pytest.mark.parametrize("length", [-1, 100])
    def test_parse_header_length_outside_body(self, length: int) -> None:
        """A header length outside the body is a MalformedBody."""
        with pytest.raises(MalformedBody):
            parse_header(b'{"a": 1}', length)

    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ({"parameters": {"timeout": 5}}, 5),
            ({"parameters": {"timeout": 0}}, None),
            ({"parameters": {}}, None),
            ({}, None),
        ],
    )
    def test_timeout_us(self, header: dict[str, Any], expected: int | None) -> None:
        """timeout_us reads a non-negative integer `parameters.timeout` from a parsed header."""
        assert timeout_us(header) == expected

    @pytest.mark.parametrize(
        "header",
        [{"parameters": {"timeout": True}}, {"parameters": {"timeout": -1}}, {"parameters": [1]}],
    )
    def test_timeout_us_refuses_malformed(self, header: dict[str, Any]) -> None:
        """timeout_us refuses a malformed timeout or parameters instead of ignoring it."""
        with pytest.raises(MalformedBody):
            timeout_us(header)

    def test_with_timeout_replaces_and_keeps_the_rest(self) -> None:
        """with_timeout sets the timeout, keeps other keys and leaves its input alone."""
        header = {"id": "r", "parameters": {"timeout": 900, "k": "v"}, "inputs": []}
        out = orjson.loads(with_timeout(header, 250))
        assert out == {"id": "r", "parameters": {"timeout": 250, "k": "v"}, "inputs": []}
        assert header["parameters"] == {"timeout": 900, "k": "v"}

    def test_with_timeout_without_parameters(self) -> None:
        """with_timeout adds `parameters` when the header has none (or a broken one)."""
        assert orjson.loads(with_timeout({"parameters": 3}, 7)) == {"parameters": {"timeout": 7}}


class TestDecodeOutputs:
    def test_requested_outputs_with_parameters(self) -> None:
        """binary_data and classification parameters of requested outputs are decoded."""
        request = _decode(
            {
                "inputs": [_input("x", "FP32", [1], [1])],
                "outputs": [
                    {"name": "y", "parameters": {"binary_data": True}},
                    {"name": "z", "parameters": {"classification": 3}},
                    {"name": "w"},
                ],
            }
        )
        assert request.outputs == [
            RequestedOutput("y", binary=True, classification=0),
            RequestedOutput("z", binary=False, classification=3),
            RequestedOutput("w", binary=False, classification=0),
        ]

    def test_request_level_binary_data_output(self) -> None:
        """`binary_data_output` makes outputs binary unless an output says otherwise."""
        request = _decode(
            {
                "parameters": {"binary_data_output": True},
                "inputs": [_input("x", "FP32", [1], [1])],
                "outputs": [{"name": "y"}, {"name": "z", "parameters": {"binary_data": False}}],
            }
        )
        assert request.binary_output is True
        assert request.outputs is not None
        assert [o.binary for o in request.outputs] == [True, False]

    def test_an_output_named_twice_counts_once(self) -> None:
        """An output asked for twice is answered once, as the first asking says (Triton
        keeps a set of requested outputs): two entries of one name broke tritonclient."""
        doc = {
            "inputs": [_ok_input()],
            "outputs": [
                {"name": "y", "parameters": {"binary_data": True, "classification": 2}},
                {"name": "y", "parameters": {"binary_data": False}},
                {"name": "z"},
            ],
        }
        request = decode_request(orjson.dumps(doc), None)
        assert request.outputs == [
            RequestedOutput("y", binary=True, classification=2),
            RequestedOutput("z", binary=False, classification=0),
        ]

    def test_binary_data_output_must_be_true_exactly(self) -> None:
        """A truthy non-boolean `binary_data_output` does not switch binary output on."""
        request = _decode(
            {"parameters": {"binary_data_output": 1}, "inputs": [_input("x", "FP32", [1], [1])]}
        )
        assert request.binary_output is False

    def test_empty_outputs_list(self) -> None:
        """An explicit empty `outputs` list is kept apart from an absent one."""
        request = _decode({"inputs": [_input("x", "FP32", [1], [1])], "outputs": []})
        assert request.outputs == []


class TestDecodeBinary:
    @pytest.mark.parametrize(("datatype", "values", "dtype"), DATATYPES)
    def test_every_numeric_datatype(self, datatype: str, values: list[Any], dtype: Any) -> None:
        """Each numeric datatype decodes from little-endian binary data."""
        raw = np.array(values, dtype=dtype).astype(np.dtype(dtype).newbyteorder("<")).tobytes()
        body, length = _with_binary({"inputs": [_binary_input("x", datatype, [2], len(raw))]}, raw)
        array = decode_request(body, length).inputs[0].array
        assert array.dtype.kind == np.dtype(dtype).kind
        assert array.dtype.itemsize == np.dtype(dtype).itemsize
        np.testing.assert_array_equal(array, np.array(values, dtype=dtype))

    def test_header_length_splits_json_from_binary(self) -> None:
        """Inference-Header-Content-Length marks where the JSON ends and binary data starts."""
        raw = np.arange(6, dtype="<f4").tobytes()
        body, length = _with_binary({"inputs": [_binary_input("x", "FP32", [2, 3], 24)]}, raw)
        (tensor,) = decode_request(body, length).inputs
        assert tensor.shape == (2, 3)
        np.testing.assert_array_equal(tensor.array, np.arange(6, dtype=np.float32).reshape(2, 3))

    def test_bytes_elements_are_length_prefixed(self) -> None:
        """BYTES binary data is a 4-byte little-endian length before each element."""
        raw = _bytes_elements(b"hello", b"", "ü".encode())
        body, length = _with_binary({"inputs": [_binary_input("s", "BYTES", [3], len(raw))]}, raw)
        array = decode_request(body, length).inputs[0].array
        assert array.dtype == object
        assert array.tolist() == ["hello", "", "ü"]

    def test_mixed_json_and_binary_inputs(self) -> None:
        """JSON inputs between binary ones do not shift the binary offsets."""
        a = np.array([1, 2], dtype="<i4").tobytes()
        c = _bytes_elements(b"xy")
        body, length = _with_binary(
            {
                "inputs": [
                    _binary_input("a", "INT32", [2], len(a)),
                    _input("b", "FP32", [1], [0.5]),
                    _binary_input("c", "BYTES", [1], len(c)),
                ]
            },
            a,
            c,
        )
        request = decode_request(body, length)
        assert [t.name for t in request.inputs] == ["a", "b", "c"]
        assert request.inputs[0].array.tolist() == [1, 2]
        assert request.inputs[1].array.tolist() == [0.5]
        assert request.inputs[2].array.tolist() == ["xy"]

    def test_header_length_without_binary_data(self) -> None:
        """A header length equal to the whole body means JSON-only inputs."""
        body = _body({"inputs": [_input("x", "FP32", [1], [1])]})
        assert decode_request(body, len(body)).inputs[0].array.tolist() == [1.0]

    def test_zero_sized_binary_tensor(self) -> None:
        """A binary tensor with no elements takes binary_data_size 0."""
        body, length = _with_binary({"inputs": [_binary_input("x", "FP32", [0, 4], 0)]})
        assert decode_request(body, length).inputs[0].array.shape == (0, 4)


def _bad(doc: Any) -> tuple[bytes, None]:
    return _body(doc), None


def _ok_input(**changes: Any) -> dict[str, Any]:
    """A valid input carrying the numeric canary, with some keys changed (None removes a key)."""
    entry = _input("x", "FP32", [2], [CANARY_NUM, CANARY_NUM])
    for key, value in changes.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    return entry


def _doc(*inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"parameters": {"secret": CANARY}, "inputs": list(inputs), **extra}


_FOUR = b"\x01\x02\x03\x04"
_CANARY_BYTES = CANARY.encode()

# (body, header length, expected error); every body holds a canary value somewhere.
MALFORMED: dict[str, tuple[tuple[bytes, int | None], type[RouterError]]] = {
    "not json": ((b'{"inputs": [' + _CANARY_BYTES, None), MalformedBody),
    "not json, canary in a string": ((b'{"k": "' + _CANARY_BYTES + b'"', None), MalformedBody),
    "invalid utf-8 json": ((b'{"k": "\xff' + _CANARY_BYTES + b'"}', None), MalformedBody),
    "empty body": ((b"", None), MalformedBody),
    "not an object": (_bad([CANARY, CANARY_NUM]), MalformedBody),
    "json string": (_bad(CANARY), MalformedBody),
    "inputs missing": (_bad({"parameters": {"secret": CANARY}}), MalformedBody),
    "inputs empty": (_bad(_doc()), MalformedBody),
    "inputs not a list": (_bad({"inputs": _ok_input()}), MalformedBody),
    "input not an object": (_bad({"inputs": [CANARY]}), MalformedBody),
    "input without name": (_bad(_doc(_ok_input(name=None))), MalformedBody),
    "input with empty name": (_bad(_doc(_ok_input(name=""))), MalformedBody),
    "input name not a string": (_bad(_doc(_ok_input(name=CANARY_NUM))), MalformedBody),
    "id not a string": (_bad(_doc(_ok_input(), id=CANARY_NUM)), MalformedBody),
    "parameters not an object": (
        _bad({"parameters": [CANARY], "inputs": [_ok_input()]}),
        MalformedBody,
    ),
    "input parameters not an object": (_bad(_doc(_ok_input(parameters=CANARY))), MalformedBody),
    "unknown datatype": (_bad(_doc(_ok_input(datatype="FLOAT32"))), InvalidTensor),
    "datatype missing": (_bad(_doc(_ok_input(datatype=None))), InvalidTensor),
    "datatype lower case": (_bad(_doc(_ok_input(datatype="fp32"))), InvalidTensor),
    "negative dimension": (_bad(_doc(_ok_input(shape=[-2]))), InvalidTensor),
    "bool dimension": (_bad(_doc(_ok_input(shape=[True, True]))), InvalidTensor),
    "float dimension": (_bad(_doc(_ok_input(shape=[2.0]))), InvalidTensor),
    "shape not a list": (_bad(_doc(_ok_input(shape=2))), InvalidTensor),
    "shape missing": (_bad(_doc(_ok_input(shape=None))), InvalidTensor),
    "too few elements": (_bad(_doc(_ok_input(shape=[3]))), InvalidTensor),
    "too many elements": (_bad(_doc(_ok_input(shape=[1]))), InvalidTensor),
    "ragged nested data": (
        _bad(_doc(_ok_input(shape=[3], data=[[CANARY_NUM], [CANARY_NUM, CANARY_NUM]]))),
        InvalidTensor,
    ),
    "strings for a numeric type": (_bad(_doc(_ok_input(data=[CANARY, CANARY]))), InvalidTensor),
    "numeric strings for FP32": (_bad(_doc(_ok_input(data=["1.5", CANARY_NUM]))), InvalidTensor),
    "numeric strings for FP64": (
        _bad(_doc(_ok_input(datatype="FP64", data=["1.5", CANARY_NUM]))),
        InvalidTensor,
    ),
    "booleans for FP16": (
        _bad(_doc(_ok_input(datatype="FP16", data=[True, False]))),
        InvalidTensor,
    ),
    "zero-size shape past numpy's range": (
        _bad(_doc(_ok_input(shape=[2**63 - 1, 0], data=[]))),
        InvalidTensor,
    ),
    "zero-size bytes shape past numpy's range": (
        _bad(_doc(_ok_input(datatype="BYTES", shape=[2**62, 0], data=[]))),
        InvalidTensor,
    ),
    "zero-size binary shape past numpy's range": (
        _with_binary(_doc(_binary_input("x", "FP32", [2**62, 0], 0)), b""),
        InvalidTensor,
    ),
    "a boolean among FP32 numbers": (
        _bad(_doc(_ok_input(data=[True, CANARY_NUM]))),
        InvalidTensor,
    ),
    "a boolean among nested FP64 numbers": (
        _bad(_doc(_ok_input(datatype="FP64", shape=[2, 1], data=[[CANARY_NUM], [False]]))),
        InvalidTensor,
    ),
    "a boolean among INT64 numbers": (
        _bad(_doc(_ok_input(datatype="INT64", data=[CANARY_NUM, True]))),
        InvalidTensor,
    ),
    "a boolean among nested UINT8 numbers": (
        _bad(_doc(_ok_input(datatype="UINT8", shape=[1, 2], data=[[1, False]]))),
        InvalidTensor,
    ),
    "null data": (_bad(_doc(_ok_input(data=[None, CANARY_NUM]))), InvalidTensor),
    "object as data": (_bad(_doc(_ok_input(shape=[1], data={"k": CANARY}))), InvalidTensor),
    "number for bool": (_bad(_doc(_ok_input(datatype="BOOL"))), InvalidTensor),
    "float for an integer type": (
        _bad(_doc(_ok_input(datatype="INT32", data=[CANARY_NUM + 0.5, 1]))),
        InvalidTensor,
    ),
    "300 for UINT8": (_bad(_doc(_ok_input(datatype="UINT8", data=[300, 1]))), InvalidTensor),
    "-1 for UINT32": (_bad(_doc(_ok_input(datatype="UINT32", data=[-1, 1]))), InvalidTensor),
    "too large for INT8": (
        _bad(_doc(_ok_input(datatype="INT8", data=[CANARY_NUM, 1]))),
        InvalidTensor,
    ),
    "number for BYTES": (
        _bad(_doc(_ok_input(datatype="BYTES", shape=[1], data=[CANARY_NUM]))),
        InvalidTensor,
    ),
    "no data and no binary size": (_bad(_doc(_ok_input(data=None))), MalformedBody),
    "data and binary size": (
        _with_binary(_doc(_ok_input(parameters={"binary_data_size": 8})), b"\0" * 8),
        MalformedBody,
    ),
    "duplicate input names": (_bad(_doc(_ok_input(), _ok_input())), MalformedBody),
    "shared memory input": (
        _bad(_doc(_ok_input(parameters={"shared_memory_region": CANARY}))),
        InvalidTensor,
    ),
    "shared memory output": (
        _bad(
            _doc(
                _ok_input(), outputs=[{"name": "y", "parameters": {"shared_memory_region": CANARY}}]
            )
        ),
        InvalidTensor,
    ),
    "outputs not a list": (_bad(_doc(_ok_input(), outputs={"name": CANARY})), MalformedBody),
    "output without name": (_bad(_doc(_ok_input(), outputs=[{"id": CANARY}])), MalformedBody),
    "output binary_data not a bool": (
        _bad(_doc(_ok_input(), outputs=[{"name": "y", "parameters": {"binary_data": CANARY}}])),
        MalformedBody,
    ),
    "negative classification": (
        _bad(_doc(_ok_input(), outputs=[{"name": "y", "parameters": {"classification": -1}}])),
        MalformedBody,
    ),
    "output parameters not an object": (
        _bad(_doc(_ok_input(), outputs=[{"name": "y", "parameters": [CANARY]}])),
        MalformedBody,
    ),
    "binary size mismatch": (
        _with_binary(_doc(_binary_input("x", "FP32", [2], 4)), _CANARY_BYTES[:4]),
        InvalidTensor,
    ),
    "binary size past the body": (
        _with_binary(_doc(_binary_input("x", "FP32", [2], 8)), _CANARY_BYTES[:4]),
        MalformedBody,
    ),
    "negative binary size": (
        _with_binary(_doc(_binary_input("x", "FP32", [1], -4)), _FOUR),
        MalformedBody,
    ),
    "binary size not an int": (
        _with_binary(_doc(_binary_input("x", "FP32", [1], "4")), _FOUR),
        MalformedBody,
    ),
    "binary size without header length": (
        (_body(_doc(_binary_input("x", "FP32", [1], 4))) + _FOUR, None),
        MalformedBody,
    ),
    "leftover binary bytes": (
        _with_binary(_doc(_binary_input("x", "UINT8", [4], 4)), _FOUR, _CANARY_BYTES),
        MalformedBody,
    ),
    "bytes element past the data": (
        _with_binary(
            _doc(_binary_input("s", "BYTES", [1], 4 + len(_CANARY_BYTES))),
            struct.pack("<I", 1000) + _CANARY_BYTES,
        ),
        InvalidTensor,
    ),
    "bytes data ends before an element": (
        _with_binary(
            _doc(_binary_input("s", "BYTES", [2], 4 + len(_CANARY_BYTES))),
            _bytes_elements(_CANARY_BYTES),
        ),
        InvalidTensor,
    ),
    "bytes data with extra elements": (
        _with_binary(
            _doc(_binary_input("s", "BYTES", [1], 2 * (4 + len(_CANARY_BYTES)))),
            _bytes_elements(_CANARY_BYTES, _CANARY_BYTES),
        ),
        InvalidTensor,
    ),
    "bytes element not utf-8": (
        _with_binary(
            _doc(_binary_input("s", "BYTES", [1], 5 + len(_CANARY_BYTES))),
            _bytes_elements(b"\xff" + _CANARY_BYTES),
        ),
        InvalidTensor,
    ),
}


def _header_length_case(length: int) -> tuple[bytes, int]:
    body, _ = _with_binary(_doc(_binary_input("x", "UINT8", [4], 4)), _FOUR)
    return body, length


MALFORMED["header length beyond the body"] = ((_header_length_case(10_000)), MalformedBody)
MALFORMED["negative header length"] = ((_header_length_case(-1)), MalformedBody)
MALFORMED["header length cuts the json"] = ((_header_length_case(10)), MalformedBody)


class TestDecodeErrors:
    @pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
    def test_non_finite_json_number_says_what_to_do(self, token: str) -> None:
        """tritonclient's JSON for a tensor holding NaN or ±Infinity (bare tokens, not JSON)
        is a 400 that names them and says to send the tensor as binary, also after non-ASCII
        text earlier in the document."""
        body = (
            '{"id": "é☃", "inputs": [{"name": "x", "shape": [2], "datatype": "FP32", '
            f'"data": [1.0, {token}]}}]}}'
        ).encode()
        with pytest.raises(MalformedBody) as caught:
            decode_request(body, None)
        assert "NaN and Infinity" in caught.value.message
        assert "binary" in caught.value.message

    def test_other_bad_json_keeps_its_position(self) -> None:
        """Any other JSON error still names its line and column."""
        with pytest.raises(MalformedBody) as caught:
            decode_request(b'{"inputs": [Nope]}', None)
        assert "column" in caught.value.message

    @pytest.mark.parametrize(("case", "expected"), MALFORMED.values(), ids=list(MALFORMED))
    def test_rejected_with_the_right_error(
        self, case: tuple[bytes, int | None], expected: type[RouterError]
    ) -> None:
        """A malformed request raises its RouterError subclass and the status that goes with it."""
        body, length = case
        with pytest.raises(expected) as info:
            decode_request(body, length)
        assert type(info.value) is expected
        assert info.value.status == 400

    @pytest.mark.parametrize("case", [c for c, _ in MALFORMED.values()], ids=list(MALFORMED))
    def test_message_never_holds_request_data(self, case: tuple[bytes, int | None]) -> None:
        """No error message repeats a value from the request's data."""
        body, length = case
        with pytest.raises(RouterError) as info:
            decode_request(body, length)
        for canary in CANARIES:
            assert canary not in str(info.value)
            assert canary not in info.value.message

    def test_out_of_range_values_are_not_echoed(self) -> None:
        """The out-of-range value itself stays out of the message."""
        with pytest.raises(InvalidTensor) as info:
            _decode({"inputs": [_input("x", "UINT8", [1], [300])]})
        assert "300" not in str(info.value)
        assert "UINT8" in str(info.value)

    def test_message_names_the_input(self) -> None:
        """Errors about one input name it, so the client can tell which one is wrong."""
        with pytest.raises(InvalidTensor, match="'pixels'"):
            _decode({"inputs": [_input("pixels", "FP32", [3], [1, 2])]})

    def test_more_than_64_dimensions(self) -> None:
        """A shape with more dimensions than numpy supports is an InvalidTensor."""
        with pytest.raises(InvalidTensor):
            _decode({"inputs": [_input("x", "FP32", [1] * 65, [1])]})

    def test_deeply_nested_bytes_data(self) -> None:
        """BYTES data nested a thousand lists deep is rejected, not a RecursionError."""
        data = b"[" * 1000 + b'"a"' + b"]" * 1000
        body = b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[1],"data":' + data + b"}]}"
        with pytest.raises(RouterError):
            decode_request(body, None)

    def test_huge_bytes_element_count(self) -> None:
        """A BYTES shape with 2**62 elements is rejected before any allocation."""
        body, length = _with_binary({"inputs": [_binary_input("s", "BYTES", [2**62], 0)]})
        with pytest.raises(InvalidTensor):
            decode_request(body, length)


def _parse_response(body: bytes, header_length: int | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        return orjson.loads(body), b""
    return orjson.loads(body[:header_length]), body[header_length:]


class TestEncodeResponse:
    def test_json_output(self) -> None:
        """A non-binary output is a JSON entry with flat data and no header length."""
        array = np.array([[1, 2], [3, 4]], dtype=np.float32)
        body, length = encode_response("m", "1", "req-9", [OutputTensor("y", array, False)])
        assert length is None
        assert orjson.loads(body) == {
            "model_name": "m",
            "model_version": "1",
            "id": "req-9",
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}],
        }

    def test_id_absent(self) -> None:
        """Without a request id the response has no `id` key."""
        body, _ = encode_response("m", "1", None, [OutputTensor("y", np.zeros(1), False)])
        assert "id" not in orjson.loads(body)

    def test_binary_output_and_header_length(self) -> None:
        """A binary output follows the JSON header, whose length is returned."""
        array = np.array([1.5, -2.0], dtype=np.float32)
        body, length = encode_response("m", "3", None, [OutputTensor("y", array, True)])
        assert length is not None
        doc, tail = _parse_response(body, length)
        assert doc["outputs"] == [
            {"name": "y", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}
        ]
        assert tail == array.astype("<f4").tobytes()

    def test_mixed_outputs_keep_binary_order(self) -> None:
        """Binary chunks appear in output order; JSON outputs between them add no bytes."""
        first = np.array([1, 2], dtype=np.int64)
        middle = np.array([True, False])
        last = np.array([7], dtype=np.uint8)
        outputs = [
            OutputTensor("a", first, True),
            OutputTensor("b", middle, False),
            OutputTensor("c", last, True),
        ]
        body, length = encode_response("m", "1", None, outputs)
        doc, tail = _parse_response(body, length)
        assert doc["outputs"][1]["data"] == [True, False]
        assert doc["outputs"][1]["datatype"] == "BOOL"
        assert tail == first.astype("<i8").tobytes() + last.tobytes()

    def test_bytes_output_as_json(self) -> None:
        """BYTES outputs are JSON strings, whether the array holds str or bytes."""
        array = np.array(["cat", b"dog"], dtype=object)
        body, _ = encode_response("m", "1", None, [OutputTensor("s", array, False)])
        (entry,) = orjson.loads(body)["outputs"]
        assert entry["datatype"] == "BYTES"
        assert entry["data"] == ["cat", "dog"]

    def test_bytes_output_as_binary(self) -> None:
        """Binary BYTES outputs are length-prefixed UTF-8 elements."""
        array = np.array(["ü", ""], dtype=object)
        body, length = encode_response("m", "1", None, [OutputTensor("s", array, True)])
        doc, tail = _parse_response(body, length)
        assert tail == _bytes_elements("ü".encode(), b"")
        assert doc["outputs"][0]["parameters"]["binary_data_size"] == len(tail)

    def test_string_array_from_onnxruntime(self) -> None:
        """A numpy unicode array (kind U) is sent as BYTES."""
        body, _ = encode_response("m", "1", None, [OutputTensor("s", np.array(["x", "yz"]), False)])
        assert orjson.loads(body)["outputs"][0]["data"] == ["x", "yz"]

    @pytest.mark.parametrize(("datatype", "values", "dtype"), DATATYPES)
    def test_round_trip_binary(self, datatype: str, values: list[Any], dtype: Any) -> None:
        """Binary outputs, read back as binary request inputs, give the original arrays."""
        self._round_trip(datatype, values, dtype, binary=True)

    @pytest.mark.parametrize(("datatype", "values", "dtype"), JSON_DATATYPES)
    def test_round_trip_json(self, datatype: str, values: list[Any], dtype: Any) -> None:
        """JSON outputs, read back as JSON request inputs, give the original arrays."""
        self._round_trip(datatype, values, dtype, binary=False)

    @staticmethod
    def _round_trip(datatype: str, values: list[Any], dtype: Any, binary: bool) -> None:
        array = np.array([values, values], dtype=dtype)
        text = np.array([["a", "ü"], ["", "z"]], dtype=object)
        body, length = encode_response(
            "m", "1", "r", [OutputTensor("t", array, binary), OutputTensor("s", text, binary)]
        )
        doc, tail = _parse_response(body, length)
        assert doc["outputs"][0]["datatype"] == datatype
        request, request_length = _with_binary({"inputs": doc["outputs"]}, tail)
        decoded = decode_request(request, request_length if binary else None)
        np.testing.assert_array_equal(decoded.inputs[0].array, array)
        assert decoded.inputs[0].array.dtype == array.dtype
        assert decoded.inputs[1].array.tolist() == text.tolist()


class TestEncodeNonFinite:
    @pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
    def test_json_keeps_nan_and_infinity_as_tritons_tokens(self, dtype: Any) -> None:
        """NaN and ±inf are written as NaN / Infinity / -Infinity (Triton's rapidjson tokens),
        which python-rapidjson (tritonclient's reader) reads back; finite values unchanged."""
        import rapidjson

        array = np.array([[0.5, np.nan, np.inf], [-np.inf, -0.0, 3.0]], dtype=dtype)
        body, length = encode_response("m", "1", None, [OutputTensor("y", array, False)])
        assert length is None
        assert b"null" not in body
        assert b'"data":[0.5,NaN,Infinity,-Infinity,-0.0,3.0]' in body
        data = np.array(rapidjson.loads(body)["outputs"][0]["data"], dtype=dtype)
        np.testing.assert_array_equal(data, array.ravel())

    def test_finite_floats_unchanged(self) -> None:
        """An all-finite tensor is written by orjson as before (no token rewriting)."""
        array = np.array([0.1, 1e30, -2.0], dtype=np.float32)
        body, _ = encode_response("m", "1", None, [OutputTensor("y", array, False)])
        plain = orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)
        assert orjson.loads(body)["outputs"][0]["data"] == orjson.loads(plain)


class TestClassify:
    def test_top_k_best_first_with_labels(self) -> None:
        """Entries are "score:index:label", highest score first."""
        out = classify(np.array([0.1, 0.7, 0.2]), 2, ("a", "b", "c"))
        assert out.tolist() == ["0.700000:1:b", "0.200000:2:c"]

    def test_without_labels(self) -> None:
        """With no labels an entry is "score:index"."""
        assert classify(np.array([0.25, 0.75]), 1, ()).tolist() == ["0.750000:1"]

    def test_labels_shorter_than_classes(self) -> None:
        """Classes past the end of the labels get no label."""
        out = classify(np.array([0.1, 0.9, 0.5]), 3, ("a",))
        assert out.tolist() == ["0.900000:1", "0.500000:2", "0.100000:0:a"]

    def test_k_larger_than_classes(self) -> None:
        """Asking for more classes than exist returns every class."""
        out = classify(np.array([0.3, 0.6]), 10, ("a", "b"))
        assert out.tolist() == ["0.600000:1:b", "0.300000:0:a"]

    def test_ties_keep_index_order(self) -> None:
        """Equal scores are listed lowest index first."""
        out = classify(np.array([0.5, 0.5, 0.5]), 3, ())
        assert [entry.split(":")[1] for entry in out.tolist()] == ["0", "1", "2"]

    def test_two_dimensional_ranks_each_row(self) -> None:
        """A batch of score rows is ranked row by row."""
        scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], dtype=np.float32)
        out = classify(scores, 2, ("a", "b", "c"), batched=True)
        assert out.shape == (2, 2)
        assert out.tolist() == [
            ["0.900000:1:b", "0.100000:0:a"],
            ["0.800000:0:a", "0.100000:1:b"],
        ]

    def test_batched_one_score_per_entry(self) -> None:
        """A batching model's [N] output is ranked per entry (shape [N, 1]), never one frame
        against another."""
        out = classify(np.array([0.2, 0.9], dtype=np.float32), 3, (), batched=True)
        assert out.tolist() == [["0.200000:0"], ["0.900000:0"]]

    def test_batched_entry_ranked_over_all_its_elements(self) -> None:
        """A batch entry of several dimensions is ranked over its elements flattened, the
        index counted as Triton does: shape [N, k]."""
        scores = np.array([[[0.1, 0.2], [0.9, 0.3]], [[0.5, 0.0], [0.1, 0.6]]])
        out = classify(scores, 2, (), batched=True)
        assert out.tolist() == [["0.900000:2", "0.300000:3"], ["0.600000:3", "0.500000:0"]]

    def test_unbatched_tensor_ranked_whole(self) -> None:
        """A model that does not batch has its whole output ranked as one (shape [k])."""
        out = classify(np.array([[0.1, 0.3], [0.9, 0.2]]), 2, ("a", "b", "c", "d"))
        assert out.tolist() == ["0.900000:2:c", "0.300000:1:b"]

    def test_empty_batch(self) -> None:
        """A batch of no entries classifies to shape [0, k]."""
        assert classify(np.zeros((0, 3)), 2, (), batched=True).shape == (0, 2)

    def test_integer_scores_written_as_integers(self) -> None:
        """An integer output's scores are written as Triton's std::to_string writes them,
        "7:1", exact past 2**53, not "7.000000:1"."""
        out = classify(np.array([3, 7, 2**62 + 1], dtype=np.int64), 2, ())
        assert out.tolist() == [f"{2**62 + 1}:2", "7:1"]
        assert classify(np.array([5, 9], dtype=np.uint8), 1, ()).tolist() == ["9:1"]

    def test_scalar_is_rejected(self) -> None:
        """A 0-d output cannot be classified."""
        with pytest.raises(InvalidTensor):
            classify(np.array(0.5), 1, ())
