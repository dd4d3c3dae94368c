"""Decode a v2 inference request: the JSON header (alone, for routing), then the typed inputs
and requested outputs, with the binary tensor extension's chunks matched to their inputs.

Pure functions over bytes: no I/O, no model knowledge. Checking tensors against a model's
signature is the model's job (`router.inference.signature`); turning `data` or raw bytes into
arrays is `router.v2.tensors`'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from router.errors import InvalidTensor, MalformedBody
from router.nesting import TOO_DEEP, check_depth, is_depth_error
from router.v2.datatypes import BY_NAME, Datatype
from router.v2.tensors import from_binary, from_json

MAX_RANK = 32  # numpy's own limit is 64; no real model comes near either


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
    """Triton's per-request `timeout` parameter, in microseconds (0 or absent: none).

    A malformed one is a 400 here, before any budget is judged: read as "no timeout" it would
    route the request on a budget its client never asked for."""
    params = header.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise MalformedBody("'parameters' must be an object")
    value = params.get("timeout") if params else None
    if value is None:
        return None
    if not _count(value):
        raise MalformedBody(
            "parameters.timeout must be a non-negative integer number of microseconds"
        )
    return value or None


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
        if _non_finite_at(raw, exc.pos):
            raise MalformedBody(NON_FINITE) from None
        raise MalformedBody(f"request body is not valid JSON: {_json_reason(exc)}") from None
    if not isinstance(header, dict):
        raise MalformedBody("request body must be a JSON object")
    check_depth(raw, header)
    return header


# tritonclient writes NaN and ±Infinity as bare tokens when a tensor goes as JSON; JSON has
# no such numbers, and a "not valid JSON at column N" would leave the caller guessing.
NON_FINITE = (
    "request body is not valid JSON: NaN and Infinity are not JSON numbers; "
    "send a tensor holding them as binary data (binary_data=True)"
)


def _non_finite_at(raw: bytes | memoryview, pos: int) -> bool:
    """Whether the JSON error at character `pos` is a NaN or Infinity token (orjson points at
    the token, past a minus sign). Only the bytes up to the error are decoded."""
    text = bytes(raw[: pos * 4 + 8]).decode("utf-8", "replace")
    return text[pos : pos + 8].startswith(("NaN", "Infinity"))


def _json_reason(exc: orjson.JSONDecodeError) -> str:
    # orjson's message names the position only; it never quotes the document itself.
    return f"{exc.msg} at line {exc.lineno} column {exc.colno}"


def build_request(
    header: dict[str, Any], binary: memoryview, *, text_bytes: bool = True
) -> InferRequest:
    """Typed tensors from a parsed header and the binary part of the body; binary BYTES
    elements must be UTF-8 unless `text_bytes` is False (see `from_binary`)."""
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MalformedBody("'id' must be a string")
    parameters = _mapping(header.get("parameters"), "parameters")
    timeout_us(header)  # a malformed timeout is as bad as a malformed tensor
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise MalformedBody("'inputs' must be a non-empty list")
    inputs, offset = [], 0
    for raw in raw_inputs:
        tensor, offset = _input(raw, binary, offset, text_bytes)
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


def _input(raw: Any, binary: memoryview, offset: int, text_bytes: bool) -> tuple[InputTensor, int]:
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
        array = from_binary(name, datatype, shape, chunk, text=text_bytes)
        return InputTensor(name, datatype, shape, array), offset + size
    if "data" not in raw:
        raise MalformedBody(f"input '{name}' has no 'data' and no binary_data_size")
    return InputTensor(name, datatype, shape, from_json(name, datatype, shape, raw["data"])), offset


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


def _requested_outputs(value: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise MalformedBody("'outputs' must be a list")
    outputs: list[RequestedOutput] = []
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
        if all(out.name != raw["name"] for out in outputs):
            # Named twice: the first asking counts, as in Triton (a set of requested outputs,
            # the first entry's settings). Two entries of one name would break clients, which
            # read a binary output's bytes by its name.
            outputs.append(RequestedOutput(raw["name"], binary, top_k))
    return outputs


def _count(value: Any) -> bool:
    """A non-negative integer, where JSON's true/false must not pass for 1/0."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
