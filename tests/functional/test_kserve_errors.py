"""Every way a KServe v2 request can fail: the status, a JSON `{"error": ...}` body that says
what is wrong, and never a byte of the request's data in it."""

from __future__ import annotations

import asyncio
import gzip
import os
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from router.api.state import RUNTIME
from router.testing import (
    RouterThread,
    identity_model,
    serve_in_thread,
    settings_for,
    slow_session_builder,
    write_repository,
)

# Request data that must never come back in an error body.
CANARY_TEXT = "canary-5e1f0c9a"
CANARY_NUMBER = 424242.125  # exact in FP32 and FP64, so it would print as "424242.125"
TIMEOUT_S = 30.0


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    async with http.request(method, url, data=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def assert_error(status: int, body: bytes, expected: int, *words: str) -> str:
    """`status` is `expected`, the body is exactly {"error": "<message>"} naming `words`, and no
    canary from the request appears in it."""
    assert status == expected, body
    doc = orjson.loads(body)
    assert list(doc) == ["error"]
    message = doc["error"]
    assert isinstance(message, str)
    assert message
    for word in words:
        assert word in message
    assert CANARY_TEXT not in body.decode()
    assert "424242" not in body.decode()
    return message


def rgb_input(**overrides: Any) -> dict[str, Any]:
    tensor = {"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [CANARY_NUMBER] * 3}
    return {**tensor, **overrides}


def infer_body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


@pytest.fixture
def infer_url(demo_server: RouterThread) -> str:
    return f"{demo_server.url}/v2/models/color_classifier/infer"


class TestMalformedRequests:
    """Bodies that are not a v2 request at all: 400."""

    @pytest.mark.parametrize(
        "body",
        [
            b'{"inputs": [{"name": "rgb", "data": ["' + CANARY_TEXT.encode() + b'", ',
            b'["' + CANARY_TEXT.encode() + b'"]',
            b'{"inputs": "' + CANARY_TEXT.encode() + b'"}',
            b'{"inputs": []}',
            b"",
        ],
        ids=["truncated-json", "json-array", "inputs-not-a-list", "no-inputs", "empty"],
    )
    async def test_not_a_request(
        self, http: aiohttp.ClientSession, infer_url: str, body: bytes
    ) -> None:
        """Broken or wrongly shaped JSON is a 400 that does not quote the document."""
        status, _, reply = await call(http, "POST", infer_url, body)
        assert_error(status, reply, 400)

    @pytest.mark.parametrize("item", [b"5", b'"rgb"', b"[1, 2, 3]", b"null"])
    async def test_an_input_that_is_no_object(
        self, http: aiohttp.ClientSession, infer_url: str, item: bytes
    ) -> None:
        """An element of `inputs` that is no tensor object is a 400 for a local model, not a
        500 from sizing the request's decoding before it was checked."""
        status, _, reply = await call(http, "POST", infer_url, b'{"inputs": [' + item + b"]}")
        assert_error(status, reply, 400)

    @pytest.mark.parametrize("inputs", [b"5", b"true", b"1.5"])
    async def test_inputs_not_a_list_in_a_binary_request(
        self, http: aiohttp.ClientSession, infer_url: str, inputs: bytes
    ) -> None:
        """`inputs` a number or boolean in a body with Inference-Header-Content-Length is a
        400 saying so, not a 500 from digesting the binary part per input."""
        header = b'{"inputs": ' + inputs + b"}"
        headers = {"Inference-Header-Content-Length": str(len(header))}
        status, _, reply = await call(http, "POST", infer_url, header + b"\0" * 8, headers)
        assert_error(status, reply, 400, "'inputs' must be a non-empty list")

    @pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
    async def test_body_not_in_its_content_encoding(
        self, http: aiohttp.ClientSession, infer_url: str, encoding: str
    ) -> None:
        """A body that is not what its Content-Encoding says is a 400, not an internal error."""
        headers = {"Content-Encoding": encoding}
        status, _, reply = await call(http, "POST", infer_url, infer_body(rgb_input()), headers)
        assert_error(status, reply, 400, "Content-Encoding")

    @pytest.mark.parametrize("encoding", ["zstd", "compress", "x-gzip", "gzip, gzip"])
    async def test_unsupported_content_encoding(
        self, http: aiohttp.ClientSession, infer_url: str, encoding: str
    ) -> None:
        """A Content-Encoding the router cannot inflate is a 415 naming the accepted ones, not
        the compressed bytes read as if they were JSON (nor a vague 400)."""
        body = gzip.compress(infer_body(rgb_input()))
        headers = {"Content-Encoding": encoding}
        status, _, reply = await call(http, "POST", infer_url, body, headers)
        assert_error(status, reply, 415, "Content-Encoding", "gzip")

    async def test_truncated_json_names_the_position(
        self, http: aiohttp.ClientSession, infer_url: str
    ) -> None:
        """The parse error says where the JSON broke, which is all a client needs."""
        status, _, reply = await call(http, "POST", infer_url, b'{"inputs": [')
        assert_error(status, reply, 400, "not valid JSON", "line 1")

    @pytest.mark.parametrize("value", ["abc", "-5"])
    async def test_bad_header_length(
        self, http: aiohttp.ClientSession, infer_url: str, value: str
    ) -> None:
        """A non-numeric Inference-Header-Content-Length is a 400."""
        headers = {"Inference-Header-Content-Length": value}
        status, _, reply = await call(http, "POST", infer_url, infer_body(rgb_input()), headers)
        assert_error(status, reply, 400, "Inference-Header-Content-Length")

    async def test_header_length_past_the_body(
        self, http: aiohttp.ClientSession, infer_url: str
    ) -> None:
        """A JSON header said to be longer than the whole body is a 400."""
        body = infer_body(rgb_input())
        headers = {"Inference-Header-Content-Length": str(len(body) + 10)}
        status, _, reply = await call(http, "POST", infer_url, body, headers)
        assert_error(status, reply, 400, "outside the body")


class TestInvalidTensors:
    """Requests that parse but do not fit the model: 400 naming the tensor."""

    async def test_wrong_shape(self, http: aiohttp.ClientSession, infer_url: str) -> None:
        """A [1,4] tensor for the [-1,3] input is refused with both shapes named."""
        body = infer_body(rgb_input(shape=[1, 4], data=[CANARY_NUMBER] * 4))
        status, _, reply = await call(http, "POST", infer_url, body)
        assert_error(status, reply, 400, "rgb", "[-1, 3]", "[1, 4]")

    async def test_shape_disagrees_with_data(
        self, http: aiohttp.ClientSession, infer_url: str
    ) -> None:
        """A shape of 6 elements with 3 values is refused with both counts."""
        body = infer_body(rgb_input(shape=[2, 3]))
        status, _, reply = await call(http, "POST", infer_url, body)
        assert_error(status, reply, 400, "rgb", "6", "3")

    async def test_wrong_datatype(self, http: aiohttp.ClientSession, infer_url: str) -> None:
        """FP64 for an FP32 input is refused, naming both types."""
        body = infer_body(rgb_input(datatype="FP64"))
        status, _, reply = await call(http, "POST", infer_url, body)
        assert_error(status, reply, 400, "FP32", "FP64")

    async def test_strings_for_a_float_input(
        self, http: aiohttp.ClientSession, infer_url: str
    ) -> None:
        """BYTES data for an FP32 input is refused without quoting the strings."""
        body = infer_body(rgb_input(datatype="BYTES", data=[CANARY_TEXT] * 3))
        status, _, reply = await call(http, "POST", infer_url, body)
        assert_error(status, reply, 400, "rgb")

    async def test_a_boolean_among_the_numbers(
        self, http: aiohttp.ClientSession, infer_url: str
    ) -> None:
        """A JSON true among an FP32 tensor's numbers is a 400, as in Triton, not a 1.0 the
        model runs on."""
        body = infer_body(rgb_input(data=[[True, 0.5, 0.25]]))
        status, _, reply = await call(http, "POST", infer_url, body)
        assert_error(status, reply, 400, "rgb", "FP32")

    async def test_values_not_of_the_datatype(
        self, http: aiohttp.ClientSession, infer_url: str
    ) -> None:
        """Strings in an FP32 tensor's data are refused without quoting them."""
        body = infer_body(rgb_input(data=[CANARY_TEXT] * 3))
        status, _, reply = await call(http, "POST", infer_url, body)
        assert_error(status, reply, 400, "rgb", "FP32")

    async def test_unknown_datatype(self, http: aiohttp.ClientSession, infer_url: str) -> None:
        """A datatype the protocol does not have is refused, listing the ones it does."""
        status, _, reply = await call(
            http, "POST", infer_url, infer_body(rgb_input(datatype="F32"))
        )
        assert_error(status, reply, 400, "datatype", "FP32")

    async def test_wrong_binary_byte_size(
        self, http: aiohttp.ClientSession, infer_url: str
    ) -> None:
        """8 binary bytes for a [1,3] FP32 tensor (12 bytes) is refused with both sizes."""
        header = infer_body(
            {
                "name": "rgb",
                "shape": [1, 3],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 8},
            }
        )
        body = header + struct.pack("<2f", CANARY_NUMBER, CANARY_NUMBER)
        headers = {"Inference-Header-Content-Length": str(len(header))}
        status, _, reply = await call(http, "POST", infer_url, body, headers)
        assert_error(status, reply, 400, "rgb", "12 bytes", "got 8")

    async def test_binary_size_past_the_body(
        self, http: aiohttp.ClientSession, infer_url: str
    ) -> None:
        """A binary_data_size larger than what follows the header is refused."""
        header = infer_body(
            {
                "name": "rgb",
                "shape": [1, 3],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 1200},
            }
        )
        body = header + struct.pack("<3f", *[CANARY_NUMBER] * 3)
        headers = {"Inference-Header-Content-Length": str(len(header))}
        status, _, reply = await call(http, "POST", infer_url, body, headers)
        assert_error(status, reply, 400, "rgb", "binary_data_size")

    async def test_missing_input(self, http: aiohttp.ClientSession, infer_url: str) -> None:
        """A request without the model's input is refused, naming the missing one."""
        status, _, reply = await call(http, "POST", infer_url, infer_body(rgb_input(name="colour")))
        assert_error(status, reply, 400, "missing input 'rgb'")

    async def test_unknown_input(self, http: aiohttp.ClientSession, infer_url: str) -> None:
        """An input the model does not have is refused, naming it."""
        body = infer_body(rgb_input(), rgb_input(name="extra"))
        status, _, reply = await call(http, "POST", infer_url, body)
        assert_error(status, reply, 400, "unknown input 'extra'")

    async def test_unknown_output(self, http: aiohttp.ClientSession, infer_url: str) -> None:
        """Asking for an output the model does not have is refused, naming it."""
        body = infer_body(rgb_input(), outputs=[{"name": "logits"}])
        status, _, reply = await call(http, "POST", infer_url, body)
        assert_error(status, reply, 400, "logits")

    async def test_classification_of_a_bytes_output(
        self, http: aiohttp.ClientSession, tmp_path: Path
    ) -> None:
        """Classification asked of a BYTES output is a 400 naming the output, not a 500."""
        write_repository(tmp_path, {"text": {1: identity_model("BYTES")}})
        with serve_in_thread(settings_for(tmp_path, inference_threads=1)) as server:
            tensor = {"name": "INPUT0", "shape": [1, 2], "datatype": "BYTES"}
            body = infer_body(
                {**tensor, "data": [CANARY_TEXT, "b"]},
                outputs=[{"name": "OUTPUT0", "parameters": {"classification": 1}}],
            )
            url = f"{server.url}/v2/models/text/infer"
            status, _, reply = await call(http, "POST", url, body)
        assert_error(status, reply, 400, "OUTPUT0", "classification")

    def test_tritonclient_sees_status_and_message(
        self, triton: triton_http.InferenceServerClient
    ) -> None:
        """The real client raises InferenceServerException carrying the 400 and the message."""
        tensor = triton_http.InferInput("rgb", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.full((1, 4), CANARY_NUMBER, dtype=np.float32))
        with pytest.raises(InferenceServerException) as info:
            triton.infer("color_classifier", [tensor])
        assert info.value.status() == "400"
        assert "expected shape" in info.value.message()
        assert "424242" not in info.value.message()


class TestBadRequestBeforeBudget:
    """A malformed request is a 400 whatever its budget: never a 504 for a budget no target
    meets, nor a budget read as absent."""

    @pytest.mark.parametrize("micros", ["soon", -5, True, 1.5, [1]])
    async def test_malformed_timeout_parameter(
        self, http: aiohttp.ClientSession, infer_url: str, micros: Any
    ) -> None:
        """A `parameters.timeout` that is not a non-negative integer is a 400 naming it."""
        body = infer_body(rgb_input(), parameters={"timeout": micros})
        status, _, reply = await call(http, "POST", infer_url, body)
        assert_error(status, reply, 400, "parameters.timeout")

    @pytest.mark.parametrize(
        "tensor",
        [
            rgb_input(shape=[2, 3]),  # 6 elements declared, 3 given
            rgb_input(datatype="FP64"),  # not the model's datatype
            rgb_input(shape=[1, 4], data=[CANARY_NUMBER] * 4),  # not the model's shape
            rgb_input(name="nope"),  # not the model's input
        ],
    )
    async def test_malformed_tensor_with_an_unmeetable_timeout(
        self, http: aiohttp.ClientSession, infer_url: str, tensor: dict[str, Any]
    ) -> None:
        """A 1 µs timeout no target can meet does not hide a malformed tensor's 400."""
        body = infer_body(tensor, parameters={"timeout": 1})
        status, _, reply = await call(http, "POST", infer_url, body)
        assert_error(status, reply, 400)

    async def test_malformed_tensor_with_an_unmeetable_budget_header(
        self, http: aiohttp.ClientSession, infer_url: str
    ) -> None:
        """A tiny X-Latency-Budget-Ms does not hide a malformed tensor's 400 either."""
        body = infer_body(rgb_input(shape=[2, 3]))
        headers = {"X-Latency-Budget-Ms": "0.001"}
        status, _, reply = await call(http, "POST", infer_url, body, headers)
        assert_error(status, reply, 400, "rgb")

    async def test_well_formed_request_with_an_unmeetable_timeout_is_a_504(
        self, http: aiohttp.ClientSession, infer_url: str
    ) -> None:
        """The check costs a valid request nothing: it still gets budget_unmeetable."""
        body = infer_body(rgb_input(), parameters={"timeout": 1})
        status, _, reply = await call(http, "POST", infer_url, body)
        assert_error(status, reply, 504, "latency budget")

    @pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf", "1e999", "1_000", ""])
    async def test_malformed_budget_header(
        self, http: aiohttp.ClientSession, infer_url: str, value: str
    ) -> None:
        """A malformed X-Latency-Budget-Ms is a 400 naming the header."""
        headers = {"X-Latency-Budget-Ms": value}
        status, _, reply = await call(http, "POST", infer_url, infer_body(rgb_input()), headers)
        assert_error(status, reply, 400, "X-Latency-Budget-Ms")


class TestNotFound:
    """Unknown models, versions and endpoints: 404 (405 for a wrong method), always JSON."""

    @pytest.mark.parametrize(
        ("method", "path", "words"),
        [
            ("POST", "/v2/models/no_such_model/infer", ["no_such_model"]),
            ("GET", "/v2/models/no_such_model", ["no_such_model"]),
            ("GET", "/v2/models/no_such_model/ready", ["no_such_model"]),
            ("POST", "/v2/models/color_classifier/versions/9/infer", ["version", "9"]),
            ("GET", "/v2/models/color_classifier/versions/9", ["version", "9"]),
            ("GET", "/v2/models/color_classifier/versions/latest/stats", ["latest"]),
            ("GET", "/v2/models/no_such_model/stats", ["no_such_model"]),
            ("GET", "/v2/no/such/endpoint", ["no such endpoint"]),
            ("GET", "/", ["no such endpoint"]),
        ],
    )
    async def test_not_found(
        self,
        http: aiohttp.ClientSession,
        demo_server: RouterThread,
        method: str,
        path: str,
        words: list[str],
    ) -> None:
        """Each unknown thing is a 404 whose message names it."""
        body = infer_body(rgb_input()) if method == "POST" else None
        status, headers, reply = await call(http, method, demo_server.url + path, body)
        assert headers["Content-Type"].startswith("application/json")
        assert_error(status, reply, 404, *words)

    async def test_wrong_method(
        self, http: aiohttp.ClientSession, demo_server: RouterThread
    ) -> None:
        """GET on the infer endpoint is a JSON 405."""
        url = f"{demo_server.url}/v2/models/color_classifier/infer"
        status, _, reply = await call(http, "GET", url)
        assert_error(status, reply, 405, "method")

    def test_tritonclient_unknown_version(self, triton: triton_http.InferenceServerClient) -> None:
        """The real client sees 404 for a version that does not exist."""
        tensor = triton_http.InferInput("rgb", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
        with pytest.raises(InferenceServerException) as info:
            triton.infer("color_classifier", [tensor], model_version="7")
        assert info.value.status() == "404"


# --- body size limit -----------------------------------------------------------------------------

LIMIT = 4096


@pytest.fixture(scope="module")
def small_body_server(edge_models: Path) -> Iterator[RouterThread]:
    """The demo models behind a 4 KiB body limit."""
    settings = settings_for(edge_models, server={"max_body_bytes": LIMIT}, inference_threads=1)
    with serve_in_thread(settings) as server:
        yield server


class TestBodyLimit:
    """Bodies over `server.max_body_bytes` are refused with 413."""

    async def test_under_the_limit_is_served(
        self, http: aiohttp.ClientSession, small_body_server: RouterThread
    ) -> None:
        """A small request on the limited server still works."""
        url = f"{small_body_server.url}/v2/models/color_classifier/infer"
        status, _, _ = await call(http, "POST", url, infer_body(rgb_input(data=[0, 0, 1])))
        assert status == 200

    async def test_declared_length_over_the_limit(
        self, http: aiohttp.ClientSession, small_body_server: RouterThread
    ) -> None:
        """A Content-Length over the limit is refused, naming both sizes."""
        url = f"{small_body_server.url}/v2/models/color_classifier/infer"
        body = infer_body(rgb_input(shape=[400, 3], data=[CANARY_NUMBER] * 1200))
        assert len(body) > LIMIT
        status, _, reply = await call(http, "POST", url, body)
        assert_error(status, reply, 413, str(len(body)), str(LIMIT))

    async def test_expect_continue_over_the_limit_is_refused_before_the_body(
        self, small_body_server: RouterThread
    ) -> None:
        """With `Expect: 100-continue` (curl's habit for large uploads) a declared length over
        the limit gets its 413 instead of the invitation to send the body."""
        reader, writer = await asyncio.open_connection("127.0.0.1", small_body_server.port)
        try:
            writer.write(
                b"POST /v2/models/color_classifier/infer HTTP/1.1\r\nHost: x\r\n"
                b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (LIMIT * 10)
            )
            await writer.drain()
            async with asyncio.timeout(TIMEOUT_S):
                status_line = await reader.readline()
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.read()
        finally:
            writer.close()
        assert status_line.startswith(b"HTTP/1.1 413"), status_line
        assert b"Connection: close" in head
        assert_error(413, body, 413, str(LIMIT))

    async def test_expect_continue_under_the_limit_is_served(
        self, http: aiohttp.ClientSession, small_body_server: RouterThread
    ) -> None:
        """A small body sent after `100 Continue` is answered as usual."""
        url = f"{small_body_server.url}/v2/models/color_classifier/infer"
        body = infer_body(rgb_input(data=[0, 0, 1]))
        async with http.post(url, data=body, expect100=True) as resp:
            assert resp.status == 200, await resp.read()

    @pytest.mark.parametrize(
        ("version", "expect", "status"),
        [("1.0", "100-continue", 200), ("1.1", "something-else", 417)],
        ids=["http-1.0-ignores-it", "unknown-expectation"],
    )
    async def test_other_expect_headers(
        self, small_body_server: RouterThread, version: str, expect: str, status: int
    ) -> None:
        """HTTP/1.0 has no 100 Continue (the header is ignored, as aiohttp does); an unknown
        expectation is a 417 with the usual JSON error body."""
        body = infer_body(rgb_input(data=[0, 0, 1]))
        reader, writer = await asyncio.open_connection("127.0.0.1", small_body_server.port)
        try:
            writer.write(
                b"POST /v2/models/color_classifier/infer HTTP/%s\r\nHost: x\r\n"
                b"Expect: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (version.encode(), expect.encode(), len(body), body)
            )
            await writer.drain()
            async with asyncio.timeout(TIMEOUT_S):
                status_line = await reader.readline()
                await reader.readuntil(b"\r\n\r\n")
                reply = await reader.read()
        finally:
            writer.close()
        assert status_line.split()[1] == str(status).encode(), status_line
        if status != 200:
            assert_error(status, reply, status, "Expect")

    async def test_chunked_body_over_the_limit(
        self, http: aiohttp.ClientSession, small_body_server: RouterThread
    ) -> None:
        """A chunked body (no Content-Length) that grows past the limit is refused too."""
        url = f"{small_body_server.url}/v2/models/color_classifier/infer"

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"inputs": [{"name": "rgb", "datatype": "FP32", "shape": [1000, 3], "data": ['
            for _ in range(20):
                yield (f"{CANARY_NUMBER}, " * 60).encode()
            yield b"0]}]}"

        async with http.post(url, data=chunks()) as resp:
            assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
            assert_error(resp.status, await resp.read(), 413, "limit")

    async def test_compressed_body_inflating_past_the_limit(
        self, http: aiohttp.ClientSession, small_body_server: RouterThread
    ) -> None:
        """A small gzip body that inflates past the limit is refused: the limit is on what is
        read, not on what was sent."""
        url = f"{small_body_server.url}/v2/models/color_classifier/infer"
        body = gzip.compress(b'{"inputs": [' + b" " * (LIMIT * 100) + b"]}")
        assert len(body) < LIMIT
        status, _, reply = await call(http, "POST", url, body, {"Content-Encoding": "gzip"})
        assert_error(status, reply, 413, "limit")

    async def test_repository_index_body_over_the_limit(
        self, http: aiohttp.ClientSession, small_body_server: RouterThread
    ) -> None:
        """The limit holds on every endpoint that reads a body, not only infer."""
        url = f"{small_body_server.url}/v2/repository/index"
        status, _, reply = await call(http, "POST", url, b" " * (LIMIT * 2))
        assert_error(status, reply, 413)


# --- a broken model in the repository ------------------------------------------------------------


@pytest.fixture(scope="module")
def broken_repository(tmp_path_factory: pytest.TempPathFactory, edge_models: Path) -> Path:
    root = tmp_path_factory.mktemp("broken-repo")
    color = edge_models / "color_classifier"
    write_repository(
        root,
        {
            "color_classifier": {1: (color / "1/model.onnx").read_bytes()},
            "garbage": {1: os.urandom(512)},
            "bad_config": {1: identity_model("FP32")},
        },
        {
            "color_classifier": (color / "config.yaml").read_text(),
            "bad_config": {"max_batch_size": 4, "bogus_key": True},
        },
    )
    return root


@pytest.fixture(scope="module")
def broken_server(broken_repository: Path) -> Iterator[RouterThread]:
    with serve_in_thread(settings_for(broken_repository, inference_threads=1)) as server:
        yield server


class TestBrokenModel:
    """A model file that is not ONNX leaves that model UNAVAILABLE and the others serving."""

    async def test_server_not_ready_but_live(
        self, http: aiohttp.ClientSession, broken_server: RouterThread
    ) -> None:
        """Readiness is 503 while liveness stays 200."""
        status, headers, _ = await call(http, "GET", f"{broken_server.url}/v2/health/ready")
        assert status == 503
        # Saying why, for a router in front (it keeps the site as a route for the rest).
        assert headers["X-Layer-Router-Unready"] == "models"
        status, _, _ = await call(http, "GET", f"{broken_server.url}/v2/health/live")
        assert status == 200

    async def test_index_names_the_file(
        self, http: aiohttp.ClientSession, broken_server: RouterThread, broken_repository: Path
    ) -> None:
        """The index shows the broken version UNAVAILABLE with a reason naming the file, and a
        bad config.yaml with the key it does not know."""
        status, _, reply = await call(http, "POST", f"{broken_server.url}/v2/repository/index")
        assert status == 200
        index = {(e["name"], e.get("version")): e for e in orjson.loads(reply)}
        assert index["color_classifier", "1"]["state"] == "READY"
        garbage = index["garbage", "1"]
        assert garbage["state"] == "UNAVAILABLE"
        assert str(broken_repository / "garbage" / "1" / "model.onnx") in garbage["reason"]
        bad_config = index["bad_config", None]
        assert bad_config["state"] == "UNAVAILABLE"
        assert "config.yaml" in bad_config["reason"]
        assert "bogus_key" in bad_config["reason"]

    async def test_other_models_still_serve(
        self, http: aiohttp.ClientSession, broken_server: RouterThread
    ) -> None:
        """color_classifier answers normally next to the broken models."""
        url = f"{broken_server.url}/v2/models/color_classifier/infer"
        status, _, reply = await call(http, "POST", url, infer_body(rgb_input(data=[1, 0, 0])))
        assert status == 200
        assert orjson.loads(reply)["model_version"] == "1"

    async def test_broken_model_answers_503(
        self, http: aiohttp.ClientSession, broken_server: RouterThread
    ) -> None:
        """Inference on the broken model is a 503 with Retry-After that says why (not ready,
        naming the file); its readiness is 503."""
        base = f"{broken_server.url}/v2/models/garbage"
        body = infer_body({"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1]})
        status, headers, reply = await call(http, "POST", f"{base}/infer", body)
        message = assert_error(status, reply, 503, "garbage", "not ready")
        assert "garbage/1/model.onnx" in message
        assert int(headers["Retry-After"]) >= 1
        status, _, _ = await call(http, "GET", f"{base}/ready")
        assert status == 503

    async def test_broken_model_metadata_says_why(
        self, http: aiohttp.ClientSession, broken_server: RouterThread
    ) -> None:
        """Metadata of the broken model is served, with state and reason."""
        status, _, reply = await call(http, "GET", f"{broken_server.url}/v2/models/garbage")
        assert status == 200
        params = orjson.loads(reply)["parameters"]
        assert params["state"] == "UNAVAILABLE"
        assert "model.onnx" in params["reason"]

    def test_broken_model_stats_have_the_full_shape(self, broken_server: RouterThread) -> None:
        """tritonclient's statistics of a version that never loaded carry every field Triton
        has (zeros), so code reading inference_stats or batch_stats does not break on it."""
        client = triton_http.InferenceServerClient(broken_server.host_port)
        try:
            (stats,) = client.get_inference_statistics("garbage")["model_stats"]
        finally:
            client.close()
        assert stats["inference_stats"]["success"] == {"count": 0, "ns": 0}
        assert stats["batch_stats"] == []
        assert stats["last_inference"] == 0


# --- overload and deadlines ----------------------------------------------------------------------

SLOW_RUN_S = 0.5


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[RouterThread]:
    """An identity model with no batching, a queue of one and runs that take half a second;
    fresh per test, so no latency history makes the router refuse work up front."""
    root = tmp_path
    write_repository(root, {"slow": {1: identity_model("FP32")}}, {"slow": {"warmup": False}})
    settings = settings_for(root, inference_threads=1, max_queue_size=1)
    with serve_in_thread(settings, session_builder=slow_session_builder(SLOW_RUN_S)) as server:
        yield server


def slow_body(value: float = 1.0, **extra: Any) -> bytes:
    return infer_body(
        {"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [value]}, **extra
    )


async def wait_until_running(http: aiohttp.ClientSession, server: RouterThread, runs: int) -> None:
    """Until the model has taken its `runs`-th job off the queue (queue stats count it then)."""
    url = f"{server.url}/v2/models/slow/versions/1/stats"
    give_up = time.monotonic() + TIMEOUT_S
    while time.monotonic() < give_up:
        _, _, reply = await call(http, "GET", url)
        (stats,) = orjson.loads(reply)["model_stats"]
        if stats["inference_stats"]["queue"]["count"] >= runs:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the slow model never started running")


async def queue_count(http: aiohttp.ClientSession, server: RouterThread) -> int:
    _, _, reply = await call(http, "GET", f"{server.url}/v2/models/slow/versions/1/stats")
    (stats,) = orjson.loads(reply)["model_stats"]
    return int(stats["inference_stats"]["queue"]["count"])


async def until(check: Callable[[], bool]) -> None:
    """Poll `check` (a cheap read of router state) until it holds, within TIMEOUT_S."""
    for _ in range(int(TIMEOUT_S / 0.005)):
        if check():
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("the router never reached the expected state")


class TestOverload:
    """A full queue sheds load with 503 + Retry-After; a passed deadline is a 504."""

    async def test_queue_full(self, http: aiohttp.ClientSession, slow_server: RouterThread) -> None:
        """While one request runs, the queue holds one more and the others get 503 with
        Retry-After at once."""
        url = f"{slow_server.url}/v2/models/slow/infer"
        runs = await queue_count(http, slow_server)
        async with asyncio.TaskGroup() as tasks:
            running = tasks.create_task(call(http, "POST", url, slow_body()))
            await wait_until_running(http, slow_server, runs + 1)
            burst = await asyncio.gather(*(call(http, "POST", url, slow_body()) for _ in range(4)))
        assert running.result()[0] == 200
        statuses = [status for status, _, _ in burst]
        assert set(statuses) <= {200, 503}
        assert statuses.count(503) >= 1
        for status, headers, reply in burst:
            if status == 503:
                assert_error(status, reply, 503, "queue is full")
                assert int(headers["Retry-After"]) >= 1

    @pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "cache"])
    async def test_client_gone_while_queued_never_runs(
        self, http: aiohttp.ClientSession, tmp_path: Path, cache: bool
    ) -> None:
        """A queued request whose client disconnects is dropped before it runs, also with the
        response cache on (as by default), which coalesces requests in a task of their own."""
        write_repository(
            tmp_path, {"slow": {1: identity_model("FP32")}}, {"slow": {"warmup": False}}
        )
        settings = settings_for(tmp_path, inference_threads=1, max_queue_size=1, cache=cache)
        with serve_in_thread(settings, session_builder=slow_session_builder(SLOW_RUN_S)) as server:
            await self._abandon_a_queued_request(http, server)

    async def _abandon_a_queued_request(
        self, http: aiohttp.ClientSession, slow_server: RouterThread
    ) -> None:
        url = f"{slow_server.url}/v2/models/slow/infer"
        runs = await queue_count(http, slow_server)
        assert slow_server.app is not None
        runner = slow_server.app[RUNTIME].current.models.get("slow").runner
        assert runner is not None
        leaver = aiohttp.ClientSession()
        async with leaver, asyncio.timeout(TIMEOUT_S), asyncio.TaskGroup() as tasks:
            running = tasks.create_task(call(http, "POST", url, slow_body()))
            await wait_until_running(http, slow_server, runs + 1)
            leaving = tasks.create_task(call(leaver, "POST", url, slow_body(2.0)))
            await until(lambda: runner.pending == 2)  # the second request is in the queue
            leaving.cancel()  # the client goes away: its connection closes
        assert running.result()[0] == 200
        await until(lambda: runner.pending == 0)
        assert await queue_count(http, slow_server) == runs + 1  # the abandoned one never ran

    async def test_deadline_passed_in_queue(
        self, http: aiohttp.ClientSession, slow_server: RouterThread
    ) -> None:
        """A request whose Triton `timeout` (1 us) passes while it waits behind a busy model is
        dropped with 504 and never run."""
        url = f"{slow_server.url}/v2/models/slow/infer"
        runs = await queue_count(http, slow_server)
        tensor = triton_aio.InferInput("INPUT0", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.full((1, 1), CANARY_NUMBER, dtype=np.float32))
        async with (
            triton_aio.InferenceServerClient(
                slow_server.host_port, conn_timeout=TIMEOUT_S
            ) as client,
            asyncio.TaskGroup() as tasks,
        ):
            running = tasks.create_task(call(http, "POST", url, slow_body()))
            await wait_until_running(http, slow_server, runs + 1)
            with pytest.raises(InferenceServerException) as info:
                await client.infer("slow", [tensor], timeout=1)
        assert info.value.status() == "504"
        assert "slow" in info.value.message()
        assert "424242" not in info.value.message()
        assert running.result()[0] == 200
        assert await queue_count(http, slow_server) == runs + 1  # the late one never ran

    async def test_deadline_body_is_json(
        self, http: aiohttp.ClientSession, slow_server: RouterThread
    ) -> None:
        """The 504 is the usual {"error": ...} document."""
        url = f"{slow_server.url}/v2/models/slow/infer"
        runs = await queue_count(http, slow_server)
        async with asyncio.TaskGroup() as tasks:
            running = tasks.create_task(call(http, "POST", url, slow_body()))
            await wait_until_running(http, slow_server, runs + 1)
            late = slow_body(CANARY_NUMBER, parameters={"timeout": 1})
            status, _, reply = await call(http, "POST", url, late)
        assert_error(status, reply, 504, "slow")
        assert running.result()[0] == 200
