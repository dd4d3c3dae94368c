"""router.v2.inline: binary BYTES tensors moved into the JSON header for scanning, the other
binary tensors kept in order, and anything unreadable refused (Unreadable) rather than guessed."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from router.v2.inline import Unreadable, binary_accounted_for, inline_binary_tensors


def elements(*texts: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(t)) + t for t in texts)


def tensor(
    name: str, datatype: str, shape: list[int], size: int | None, **params: Any
) -> dict[str, Any]:
    found: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if size is not None:
        params["binary_data_size"] = size
    if params:
        found["parameters"] = params
    return found


def test_bytes_become_json_strings_and_the_rest_stays_binary() -> None:
    """BYTES elements become `data` strings (flat); an FP32 chunk stays, in order."""
    text = elements(b"a@b.example", b"", "é".encode())
    fp32 = struct.pack("<2f", 1.0, 2.0)
    doc = {
        "id": "r1",
        "inputs": [
            tensor("f", "FP32", [2], 8),
            tensor("t", "BYTES", [3, 1], len(text), other=1),
            tensor("j", "INT32", [1], None),
        ],
        "outputs": [{"name": "o"}],
    }
    doc["inputs"][2]["data"] = [7]
    header, binary = inline_binary_tensors(doc, memoryview(fp32 + text)) or ({}, b"")
    assert binary == fp32
    assert header["id"] == "r1"
    assert header["outputs"] == [{"name": "o"}]
    f, t, j = header["inputs"]
    assert f == doc["inputs"][0]
    assert t == {
        "name": "t",
        "datatype": "BYTES",
        "shape": [3, 1],
        "parameters": {"other": 1},
        "data": ["a@b.example", "", "é"],
    }
    assert j == doc["inputs"][2]
    assert "data" not in doc["inputs"][1]  # the request's own document is left as it was


def test_only_parameter_gone_drops_parameters() -> None:
    """A tensor whose only parameter was binary_data_size has no `parameters` left."""
    text = elements(b"x")
    header, binary = inline_binary_tensors(
        {"inputs": [tensor("t", "BYTES", [1], len(text))]}, memoryview(text)
    ) or ({}, b"x")
    assert binary == b""
    assert header["inputs"] == [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["x"]}]


@pytest.mark.parametrize(
    ("inputs", "binary"),
    [
        ([tensor("t", "BYTES", [1], 99)], elements(b"x")),  # size past the body
        ([tensor("t", "BYTES", [1], 5)], elements(b"x") + b"extra"),  # bytes left over
        ([tensor("t", "BYTES", [1], 6)], elements(b"\xff\xfe")),  # not UTF-8
        ([tensor("t", "BYTES", [2], 5)], elements(b"x")),  # fewer elements than the shape
        ([tensor("t", "BYTES", [-1], 5)], elements(b"x")),  # not a shape
        ([tensor("t", "BYTES", [1], -5)], elements(b"x")),  # negative size
        ("not a list", b""),
        ([{**tensor("t", "BYTES", [1], 5), "data": ["y"]}], elements(b"x")),  # data as well
    ],
    ids=[
        "past-end",
        "left-over",
        "not-utf8",
        "short",
        "bad-shape",
        "negative",
        "no-list",
        "data-too",
    ],
)
def test_unreadable_bodies_are_refused(inputs: Any, binary: bytes) -> None:
    """Anything that cannot be read exactly raises Unreadable: the caller keeps it unscanned."""
    with pytest.raises(Unreadable):
        inline_binary_tensors({"inputs": inputs}, memoryview(binary))


@pytest.mark.parametrize(
    ("inputs", "size", "accounted"),
    [
        ([tensor("f", "FP32", [2], 8), tensor("j", "INT32", [1], None)], 8, True),
        ([tensor("f", "FP32", [2], 8)], 12, False),  # bytes no input declares
        ([{"name": "f", "datatype": "FP32", "shape": [2], "parameters": [8]}], 8, False),
        ([tensor("f", "FP32", [2], 16), tensor("g", "FP32", [2], -8)], 8, False),
        ("not a list", 8, False),
        ("not a list", 0, True),
    ],
    ids=["sizes-add-up", "left-over", "parameters-not-object", "negative", "no-list", "empty"],
)
def test_binary_accounted_for(inputs: Any, size: int, accounted: bool) -> None:
    """Only a binary part the inputs' sizes add up to exactly may skip being read."""
    assert binary_accounted_for({"inputs": inputs}, size) is accounted
