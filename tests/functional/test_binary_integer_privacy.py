"""KServe v2 integer tensors sent in the binary extension get the privacy verdict their JSON
form gets: the real router with the default bundle in front of recording FakeUpstreams, the
requests built by the real tritonclient. A card number in a binary INT64 tensor is found as in
a JSON one (and, as there, refused for an off-site tier: no token fits a number, see
test_numeric_tensor_redaction.py); a clean binary tensor arrives upstream byte for byte."""

from __future__ import annotations

import contextlib
import random
import shutil
import struct
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http
from test_privacy import (  # the privacy suite's site: router, plant/regional/central fakes
    Answer,
    Site,
    assert_clean,
    binary_bytes_request,
    post,
    repository,  # noqa: F401  (a fixture)
    start_site,
)

from router.resources import default_policy_bundle

CARD = 4111111111111111
CLEAN_LARGE = [1_700_000_000_000, 1_000_001, -2_500_000]  # scanned, nothing found


@pytest.fixture
async def site(stack: contextlib.AsyncExitStack, repository: Path) -> Site:  # noqa: F811
    return await start_site(stack, repository)


def triton_body(array: np.ndarray, *, binary: bool) -> tuple[bytes, dict[str, str]]:
    """tritonclient's request body for one tensor `ids` (INT64 unless `array` is a float
    array), JSON or binary."""
    datatype = "INT64" if array.dtype.kind in "iu" else triton_http.np_to_triton_dtype(array.dtype)
    tensor = triton_http.InferInput("ids", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    body, json_size = triton_http.InferenceServerClient.generate_request_body([tensor])
    if json_size is None:
        return body, {"Content-Type": "application/json"}
    return body, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(json_size),
    }


async def infer(
    http: aiohttp.ClientSession, site: Site, model: str, sent: tuple[bytes, dict[str, str]]
) -> Answer:
    body, headers = sent
    return await post(http, f"{site.url}/v2/models/{model}/infer", data=body, headers=headers)


def upstream_header(site: Site) -> dict[str, Any]:
    """The JSON part of the one request that left the site, without the budget it carries."""
    [record] = site.off_site()
    length = record.headers.get("Inference-Header-Content-Length")
    header = orjson.loads(record.body[: int(length)] if length else record.body)
    header.get("parameters", {}).pop("timeout", None)
    assert isinstance(header, dict)
    return header


async def assert_binary_part_forwarded(
    http: aiohttp.ClientSession, site: Site, sent: tuple[bytes, dict[str, str]]
) -> None:
    """A clean binary request is answered with nothing redacted, and the one request that
    left the site carries the binary part as sent, byte for byte."""
    answer = await infer(http, site, "v2-central", sent)
    assert answer.status == 200, answer.body
    assert "X-Redactions" not in answer.headers
    [record] = site.off_site()
    body, headers = sent
    length = int(headers["Inference-Header-Content-Length"])
    sent_length = int(record.headers["Inference-Header-Content-Length"])
    assert record.body[sent_length:] == body[length:]


def forget(site: Site) -> None:
    for fake in site.fakes.values():
        fake.received.clear()


class TestBinaryIntegers:
    @pytest.mark.parametrize("model", ["v2-central", "v2-regional"])
    async def test_card_in_binary_int64_is_treated_as_in_json(
        self, site: Site, http: aiohttp.ClientSession, model: str
    ) -> None:
        """A card number in a binary INT64 tensor gets what the JSON form gets: found, and
        refused with the same 422 naming the card (no token fits an INT64 element), neither
        its digits nor its 8 bytes sent anywhere."""
        array = np.array([[7, CARD, 491_234_567]], dtype=np.int64)
        answers = []
        for binary in (False, True):
            answer = await infer(http, site, model, triton_body(array, binary=binary))
            assert answer.status == 422, answer.body
            assert site.off_site() == []
            answers.append(answer)
        json_answer, binary_answer = answers
        assert binary_answer.json() == json_answer.json()
        assert "input 'ids' (INT64) holds a CARD value" in binary_answer.json()["error"]
        for name in ("X-Cache", "X-Route-Reason"):
            assert binary_answer.headers.get(name) == json_answer.headers.get(name), name
        assert str(CARD) not in binary_answer.body.decode()

    async def test_card_in_an_fp64_tensor_is_found_in_both_forms(
        self, site: Site, http: aiohttp.ClientSession
    ) -> None:
        """A card number held exactly by an FP64 element (tritonclient's JSON writes
        4111111111111111.0) is found, sent as JSON or binary alike, and refused for central
        (no token fits an FP64 element): nothing sent."""
        array = np.array([0.5, float(CARD), 1_234_567.25], dtype=np.float64)
        for binary in (False, True):
            sent = triton_body(array, binary=binary)
            assert (b"4111111111111111.0" in sent[0]) is not binary
            answer = await infer(http, site, "v2-central", sent)
            assert answer.status == 422, answer.body
            assert "input 'ids' (FP64) holds a CARD value" in answer.json()["error"]
            assert site.off_site() == []

    async def test_card_digits_in_an_fp64_with_a_fraction_or_past_2_to_the_53_never_leave(
        self, site: Site, http: aiohttp.ClientSession
    ) -> None:
        """A card number's digits held by an FP64 element with a fraction (4111111111111111.5)
        or past 2**53 (a Troy card, 9792000000000052.0), which tritonclient's JSON and the
        re-encoded header write out, are found in either form, so the tensor (which cannot
        carry a token) is refused at the edge and nothing is sent on."""
        troy = 9792000000000052
        array = np.array([0.5, CARD + 0.5, float(troy)], dtype=np.float64)
        for binary in (False, True):
            sent = triton_body(array, binary=binary)
            answer = await infer(http, site, "v2-central", sent)
            assert answer.status == 422, answer.body
            assert "(FP64) holds a CARD value" in answer.json()["error"]
            assert site.off_site() == []
            forget(site)

    @pytest.mark.parametrize(
        "written", ["4.111111111111111e15", "4111111111111111E+0", "4111111111111111000e-3"]
    )
    async def test_a_card_in_a_json_float_written_with_an_exponent_is_found(
        self, site: Site, http: aiohttp.ClientSession, written: str
    ) -> None:
        """A JSON number whose text is not the card's digit run (an exponent) is the card
        all the same: found (and so refused for central), as the plain form is."""
        tensor = f'{{"name":"ids","datatype":"FP64","shape":[2],"data":[0.5,{written}]}}'
        body = f'{{"inputs":[{tensor}]}}'.encode()
        sent = (body, {"Content-Type": "application/json"})
        answer = await infer(http, site, "v2-central", sent)
        assert answer.status == 422, answer.body
        assert "(FP64) holds a CARD value" in answer.json()["error"]
        assert site.off_site() == []

    async def test_binary_fp32_past_its_exact_integers_is_not_read_as_digits(
        self, site: Site, http: aiohttp.ClientSession
    ) -> None:
        """FP32 holds every integer exactly only up to 2**24: its larger elements (raw sensor
        counts, all integral there) carry no digits a client wrote, so a binary tensor of more
        of them than the walk's leaf limit still goes upstream as its bytes, not refused."""
        array = np.linspace(2.0**25, 2.0**31, 60_000, dtype=np.float32)
        await assert_binary_part_forwarded(http, site, triton_body(array, binary=True))

    @pytest.mark.parametrize("values", ["small", "large"])
    async def test_clean_binary_int64_arrives_byte_identical(
        self, site: Site, http: aiohttp.ClientSession, values: str
    ) -> None:
        """A clean binary INT64 tensor (64 small elements, or ones long enough to be scanned
        that hold nothing) is forwarded as sent: binary, not one byte changed."""
        array = np.arange(64, dtype=np.int64) * 1_000 - 7
        if values == "large":
            array[: len(CLEAN_LARGE)] = CLEAN_LARGE
        await assert_binary_part_forwarded(http, site, triton_body(array, binary=True))
        assert upstream_header(site)["inputs"][0]["parameters"] == {"binary_data_size": 512}

    @pytest.mark.parametrize("kind", ["int64", "bytes"])
    async def test_a_remembered_clean_survey_is_not_reused_for_other_binary_values(
        self, site: Site, http: aiohttp.ClientSession, kind: str
    ) -> None:
        """The same JSON header with other binary tensor values is another request: a clean
        one's remembered survey is not reused for one holding a card (INT64: found, so refused
        for central) or an e-mail (BYTES of the same length: redacted)."""
        if kind == "int64":
            clean = triton_body(np.array(CLEAN_LARGE[:1], dtype=np.int64), binary=True)
            dirty = triton_body(np.array([CARD], dtype=np.int64), binary=True)
        else:
            clean = binary_bytes_request("ship to nobody at all!!!")
            dirty = binary_bytes_request("ship to jane@example.com")
        assert clean[1] == dirty[1]  # same header length: only the binary part differs
        assert (await infer(http, site, "v2-central", clean)).status == 200
        answer = await infer(http, site, "v2-central", dirty)
        if kind == "int64":
            assert answer.status == 422, answer.body
            assert "holds a CARD value" in answer.json()["error"]
        else:
            assert answer.status == 200, answer.body
            assert answer.headers.get("X-Redactions") == "EMAIL=1"
        assert_clean(site.off_site(), str(CARD), "jane@example.com")
        assert CARD.to_bytes(8, "little") not in site.off_site()[-1].body

    async def test_clean_tensors_beside_a_redacted_one_keep_their_bytes(
        self, site: Site, http: aiohttp.ClientSession
    ) -> None:
        """Only the (BYTES) tensor holding the card goes upstream as JSON; a clean INT64 tensor
        long enough to be scanned and an FP32 one arrive as the bytes sent, in order."""
        stamps = np.array([1_700_000_000_000, 1_700_000_000_001], dtype=np.int64)
        scores = np.array([0.5, 0.25], dtype=np.float32)
        tensors = []
        ids = np.array([str(CARD).encode()], dtype=object)
        for name, array in (("stamps", stamps), ("ids", ids), ("s", scores)):
            datatype = "BYTES" if name == "ids" else triton_http.np_to_triton_dtype(array.dtype)
            tensor = triton_http.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array, binary_data=True)
            tensors.append(tensor)
        body, json_size = triton_http.InferenceServerClient.generate_request_body(tensors)
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(json_size),
        }
        answer = await infer(http, site, "v2-central", (body, headers))
        assert answer.status == 200, answer.body
        assert answer.headers["X-Redactions"] == "CARD=1"
        [record] = site.off_site()
        length = int(record.headers["Inference-Header-Content-Length"])
        assert record.body[length:] == stamps.tobytes() + scores.tobytes()
        stamps_in, ids_in, scores_in = upstream_header(site)["inputs"]
        assert stamps_in["parameters"] == {"binary_data_size": 16}
        assert ids_in["data"] == ["<CARD_1>"]
        assert scores_in["parameters"] == {"binary_data_size": 8}
        assert_clean(site.off_site(), str(CARD))

    async def test_too_many_digits_of_long_numbers_fail_closed_saying_why(
        self, site: Site, http: aiohttp.ClientSession
    ) -> None:
        """A binary INT64 tensor whose long numbers hold more digits than a request may have
        scanned together (450,000 of 19 digits: past 8 MiB) stays on the site, and the 422
        names that bound."""
        array = np.arange(10**18, 10**18 + 450_000, dtype=np.int64)
        answer = await infer(http, site, "v2-central", triton_body(array, binary=True))
        assert answer.status == 422, answer.body
        error = answer.json()["error"]
        assert "more than 8388608 digits of long numbers to scan" in error, error
        assert site.off_site() == []

    async def test_a_redacted_float_tensor_holding_nan_never_leaves_with_nulls(
        self, site: Site, http: aiohttp.ClientSession
    ) -> None:
        """A binary FP64 tensor holding a card number beside NaN and Infinity must go as
        JSON once redacted, and JSON has no such numbers: it stays on the site (422), never
        sent with null in their place; without the card it goes on as its bytes."""
        array = np.array([np.nan, float(CARD), np.inf, -np.inf], dtype=np.float64)
        answer = await infer(http, site, "v2-central", triton_body(array, binary=True))
        assert answer.status == 422, answer.body
        assert "NaN or Infinity" in answer.json()["error"]
        assert site.off_site() == []
        clean = np.array([np.nan, 1_700_000_000_000.0, np.inf], dtype=np.float64)
        await assert_binary_part_forwarded(http, site, triton_body(clean, binary=True))


def framed(header: dict[str, Any], binary: bytes) -> tuple[bytes, dict[str, str]]:
    """A v2 body with a JSON header and a binary part, as sent, however malformed."""
    encoded = orjson.dumps(header)
    return encoded + binary, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(encoded)),
    }


class TestMalformedBinaryRequests:
    EMAIL = "jane.doe@example.com"

    @pytest.mark.parametrize("datatype", ["BYTES", "INT64"])
    async def test_json_data_beside_binary_data_size_never_leaves_unscanned(
        self, site: Site, http: aiohttp.ClientSession, datatype: str
    ) -> None:
        """A tensor with both JSON `data` (an e-mail) and a binary_data_size (clean bytes a
        scan reads instead) is a 400, and nothing of it reaches an upstream."""
        clean = (
            struct.pack("<I", 5) + b"hello"
            if datatype == "BYTES"
            else np.array([5_000_000], dtype=np.int64).tobytes()
        )
        tensor = {
            "name": "ids",
            "datatype": datatype,
            "shape": [1],
            "data": [self.EMAIL],
            "parameters": {"binary_data_size": len(clean)},
        }
        answer = await infer(http, site, "v2-central", framed({"inputs": [tensor]}, clean))
        assert answer.status == 400, answer.body
        assert "both 'data' and binary_data_size" in answer.json()["error"]
        assert_clean(site.off_site(), self.EMAIL)

    @pytest.mark.parametrize("inputs", ["parameters-not-object", "inputs-not-list"])
    async def test_binary_part_no_input_accounts_for_never_leaves(
        self, site: Site, http: aiohttp.ClientSession, inputs: str
    ) -> None:
        """Binary bytes no input declares (a tensor's parameters not an object, inputs not a
        list) are read by no scan: the request is a 400 and the e-mail stays on the site."""
        element = self.EMAIL.encode()
        binary = struct.pack("<I", len(element)) + element
        tensor = {"name": "t", "datatype": "BYTES", "shape": [1], "parameters": [len(binary)]}
        header = {"inputs": [tensor] if inputs == "parameters-not-object" else {"t": tensor}}
        answer = await infer(http, site, "v2-central", framed(header, binary))
        assert answer.status == 400, answer.body
        assert_clean(site.off_site(), self.EMAIL)

    @pytest.mark.parametrize("datatype", ["int64", "INT128", 64, ["INT64"]])
    async def test_binary_tensor_of_an_unknown_datatype_never_leaves_unread(
        self, site: Site, http: aiohttp.ClientSession, datatype: Any
    ) -> None:
        """A binary tensor whose datatype the protocol does not name (a lower-case int64, a
        list) cannot be read as its type: a 400 (not a 500), and its bytes (a card number)
        stay on the site."""
        raw = np.array([CARD], dtype=np.int64).tobytes()
        tensor = {
            "name": "ids",
            "datatype": datatype,
            "shape": [1],
            "parameters": {"binary_data_size": len(raw)},
        }
        answer = await infer(http, site, "v2-central", framed({"inputs": [tensor]}, raw))
        assert answer.status == 400, answer.body
        assert "datatype must be one of" in answer.json()["error"]
        assert site.off_site() == []

    async def test_binary_bf16_tensor_still_goes_upstream(
        self, site: Site, http: aiohttp.ClientSession
    ) -> None:
        """BF16, a float type Triton's binary extension carries (floats are not scanned in
        either form), still reaches its upstream as sent."""
        raw = b"\x80\x3f\x00\x40"
        tensor = {
            "name": "x",
            "datatype": "BF16",
            "shape": [2],
            "parameters": {"binary_data_size": len(raw)},
        }
        body, headers = framed({"inputs": [tensor]}, raw)
        answer = await infer(http, site, "v2-central", (body, headers))
        assert answer.status == 200, answer.body
        [record] = site.off_site()
        assert record.body.endswith(raw)


def _card(rng: random.Random) -> int:
    """A random Visa number with a valid Luhn check digit."""
    body = "4" + "".join(str(rng.randrange(10)) for _ in range(14))
    total = sum(
        (d * 2 - 9 if d > 4 else d * 2) if i % 2 == 0 else d
        for i, d in enumerate(int(c) for c in reversed(body))
    )
    return int(body + str((10 - total % 10) % 10))


@pytest.mark.parametrize("dtype", [np.int64, np.float64])
async def test_more_long_numbers_than_the_leaf_limit_are_all_scanned(
    stack: contextlib.AsyncExitStack,
    repository: Path,  # noqa: F811
    tmp_path: Path,
    http: aiohttp.ClientSession,
    dtype: type,
) -> None:
    """60,000 millisecond timestamps (more than the walk's 50,000 leaves) with 1% card numbers
    planted, to an upstream-only model, JSON or binary: scanned to the end (they were a 422
    detection_failed) and the cards found, so refused as numbers that cannot carry a token,
    nothing sent. The bundle's CPU deadline is raised so that the test measures the leaf
    limit, not this machine's speed."""
    folder = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), folder)
    detection = folder / "detection.yaml"
    text = detection.read_text(encoding="utf-8")
    detection.write_text(text.replace("cpu_deadline_ms: 200", "cpu_deadline_ms: 20000"))
    site = await start_site(stack, repository, folder)
    rng = random.Random(5)
    values = [1_700_000_000_000 + i for i in range(60_000)]
    planted = sorted(rng.sample(range(60_000), 600))
    for i in planted:
        values[i] = _card(rng)
    array = np.array(values, dtype=dtype)
    for binary in (False, True):
        answer = await infer(http, site, "v2-central", triton_body(array, binary=binary))
        assert answer.status == 422, answer.body
        assert "holds a CARD value" in answer.json()["error"]
        assert "failed:central:numeric_tensor_redaction" in answer.headers["X-Route-Reason"]
        assert site.off_site() == []


@pytest.mark.parametrize("with_text", [True, False], ids=["beside-bytes", "floats-only"])
async def test_a_dropped_binary_input_takes_its_bytes_along(
    stack: contextlib.AsyncExitStack,
    repository: Path,  # noqa: F811
    tmp_path: Path,
    http: aiohttp.ClientSession,
    with_text: bool,
) -> None:
    """A bundle that drops a binary input (`inputs.0`) for off-site tiers: its bytes do not
    leave the site without the header entry that declared them (they did, after the other
    tensors' bytes, with or without a BYTES tensor inlined beside it)."""
    folder = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), folder)
    redaction = folder / "redaction.yaml"
    text = redaction.read_text(encoding="utf-8")
    text = text.replace("drop_fields: [user,", 'drop_fields: ["inputs.0", user,')
    redaction.write_text(text, encoding="utf-8")
    site = await start_site(stack, repository, folder)
    secret = np.array([424242.125, 0.5], dtype=np.float32)
    inputs: list[dict[str, Any]] = [
        {"name": "s", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}
    ]
    binary = secret.tobytes()
    if with_text:
        element = b"mail jane.doe@example.com"
        chunk = struct.pack("<I", len(element)) + element
        inputs.append(
            {
                "name": "t",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": len(chunk)},
            }
        )
        binary += chunk
    else:
        inputs.append({"name": "id", "datatype": "BYTES", "shape": [1], "data": ["jane@x.org"]})
    answer = await infer(http, site, "v2-central", framed({"inputs": inputs}, binary))
    for record in site.off_site():
        assert secret.tobytes() not in record.body
    assert answer.status == 422, answer.body
