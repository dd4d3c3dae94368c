"""A binary KServe v2 request with one tensor that needs redaction, forwarded to a Triton-like
upstream: the real router with the default bundle, the real tritonclient (binary inputs,
binary outputs), and a real aiohttp server on 127.0.0.1 that decodes the v2 binary extension
strictly, as Triton does. The redacted tensor goes as JSON `data`; every other binary tensor
keeps its bytes, its `binary_data_size` and its place, the header length is the header's, and
the outputs asked for as binary come back binary with the caller's value restored."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_aio
from aiohttp import web

from router.app import build_app
from router.settings import Settings
from router.testing import serving

EMAIL = "jane.doe@example.com"
NOTE = f"mail {EMAIL} please"
LENGTH = "Inference-Header-Content-Length"


def decode_request(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """Every input as Triton reads it; raises ValueError on anything Triton would refuse
    (a header that is not exactly the stated length of JSON, a size that does not fit, bytes
    left over)."""
    end = int(header_length) if header_length is not None else len(body)
    header = orjson.loads(body[:end])
    offset, tensors = end, {}
    for tensor in header["inputs"]:
        shape, datatype = tuple(tensor["shape"]), tensor["datatype"]
        size = tensor.get("parameters", {}).get("binary_data_size")
        if size is None:
            if datatype == "BYTES":
                tensors[tensor["name"]] = np.array(tensor["data"], dtype=object).reshape(shape)
            else:
                dtype = triton_http.triton_to_np_dtype(datatype)
                tensors[tensor["name"]] = np.array(tensor["data"], dtype=dtype).reshape(shape)
            continue
        if "data" in tensor or offset + size > len(body):
            raise ValueError(f"input {tensor['name']}: bad binary_data_size")
        raw, offset = body[offset : offset + size], offset + size
        if datatype == "BYTES":
            array = triton_http.deserialize_bytes_tensor(raw)
            tensors[tensor["name"]] = np.array([b.decode() for b in array], dtype=object)
            tensors[tensor["name"]] = tensors[tensor["name"]].reshape(shape)
        else:
            dtype = triton_http.triton_to_np_dtype(datatype)
            if len(raw) != math.prod(shape) * np.dtype(dtype).itemsize:
                raise ValueError(f"input {tensor['name']}: size does not fit its shape")
            tensors[tensor["name"]] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if offset != len(body):
        raise ValueError("binary bytes no input accounts for")
    return tensors


def binary_form(array: np.ndarray) -> bytes:
    """A tensor's bytes in the binary extension (BYTES: each element's length, then it)."""
    if array.dtype == object:
        serialized: bytes = triton_http.serialize_byte_tensor(array).item()
        return serialized
    return array.tobytes()


class TritonLike:
    """Decodes each request as Triton would and echoes every input as the output of the same
    name, binary when the request asks for that output as binary."""

    def __init__(self) -> None:
        self.decoded: list[dict[str, np.ndarray]] = []
        self.headers: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/models/{model}/infer", self.infer)
        return app

    async def infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        length = request.headers.get(LENGTH)
        try:
            tensors = decode_request(body, length)
        except (ValueError, KeyError, orjson.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        header = orjson.loads(body[: int(length)] if length else body)
        self.decoded.append(tensors)
        self.headers.append(header)
        # Each output as asked for, or every output binary when the request says so (what
        # tritonclient asks when no outputs are named).
        every = header.get("parameters", {}).get("binary_data_output", False)
        wanted = {o["name"]: o.get("parameters", {}) for o in header.get("outputs", [])}
        outputs, parts = [], []
        for name, array in tensors.items():
            datatype = (
                "BYTES" if array.dtype == object else triton_http.np_to_triton_dtype(array.dtype)
            )
            output: dict[str, Any] = {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
            }
            if wanted.get(name, {}).get("binary_data", every):
                raw = binary_form(array)
                output["parameters"] = {"binary_data_size": len(raw)}
                parts.append(raw)
            else:
                output["data"] = array.ravel().tolist()
            outputs.append(output)
        answer = orjson.dumps({"model_name": request.match_info["model"], "outputs": outputs})
        if not parts:
            return web.Response(body=answer, content_type="application/json")
        return web.Response(
            body=answer + b"".join(parts),
            headers={LENGTH: str(len(answer)), "Content-Type": "application/octet-stream"},
        )


@pytest.fixture
async def triton_site(tmp_path: Path) -> AsyncIterator[tuple[str, TritonLike]]:
    """The router (default bundle, no local models) in front of a central Triton-like
    cluster serving `tagger`: the router's URL and the upstream."""
    upstream = TritonLike()
    (tmp_path / "models").mkdir()
    async with contextlib.AsyncExitStack() as stack:
        upstream_url = await stack.enter_async_context(serving(upstream.app()))
        settings = Settings.model_validate(
            {
                "models": {"repository": str(tmp_path / "models"), "inference_threads": 1},
                "cache": {"enabled": False},
                "upstreams": [
                    {
                        "name": "central",
                        "tier": "central",
                        "protocols": ["kserve-v2"],
                        "models": ["tagger"],
                        "endpoints": [{"url": upstream_url}],
                        "health_check": {"enabled": False},
                    }
                ],
            }
        )
        url = await stack.enter_async_context(serving(build_app(settings)))
        yield url, upstream


def sent_tensors(position: int) -> dict[str, np.ndarray]:
    """Several binary tensors, the one holding an e-mail at `position` among clean ones (a
    clean BYTES one and a clean long-integer one are read for detection too)."""
    clean = {
        "scores": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "tags": np.array(["alpha", "beta gamma"], dtype=object),
        "ids": np.array([3, 1_700_000_000_000, -9], dtype=np.int64),
        "flags": np.array([True, False], dtype=np.bool_),
    }
    items = list(clean.items())
    items.insert(position, ("note", np.array([NOTE], dtype=object)))
    return dict(items)


def infer_inputs(tensors: dict[str, np.ndarray]) -> list[triton_http.InferInput]:
    inputs = []
    for name, array in tensors.items():
        datatype = "BYTES" if array.dtype == object else triton_http.np_to_triton_dtype(array.dtype)
        tensor = triton_http.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize(("position", "named"), [(0, True), (1, True), (4, True), (2, False)])
async def test_a_redacted_binary_tensor_leaves_the_others_a_valid_binary_request(
    triton_site: tuple[str, TritonLike], position: int, named: bool
) -> None:
    """The upstream decodes every tensor of the forwarded request: the e-mail tokenized in
    `note` (sent as JSON), every other tensor binary with its own size and bytes; the caller
    gets every output binary, as asked (each named, or all by `binary_data_output`), the
    e-mail restored."""
    url, upstream = triton_site
    tensors = sent_tensors(position)
    outputs = (
        [triton_http.InferRequestedOutput(name, binary_data=True) for name in tensors]
        if named
        else None
    )
    async with triton_aio.InferenceServerClient(url.removeprefix("http://")) as client:
        result = await client.infer("tagger", infer_inputs(tensors), outputs=outputs)
    [decoded] = upstream.decoded
    [header] = upstream.headers
    note = decoded["note"][0]
    assert EMAIL not in note
    assert re.fullmatch(r"mail <EMAIL_\d+> please", note)
    assert [t["name"] for t in header["inputs"]] == list(tensors)
    params = {t["name"]: t.get("parameters", {}) for t in header["inputs"]}
    assert "binary_data_size" not in params["note"]
    for name, array in tensors.items():
        if name != "note":
            np.testing.assert_array_equal(decoded[name], array)
            assert decoded[name].dtype == array.dtype
            assert params[name]["binary_data_size"] == len(binary_form(array)), name
    for name, array in tensors.items():
        assert "binary_data_size" in result.get_output(name)["parameters"], name
        got = result.as_numpy(name)
        if array.dtype == object:  # tritonclient hands BYTES back as bytes
            got = np.array([b.decode() for b in got.ravel()], dtype=object).reshape(got.shape)
        np.testing.assert_array_equal(got, array)
        assert got.dtype == array.dtype
