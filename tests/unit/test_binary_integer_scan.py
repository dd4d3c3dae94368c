"""Binary integer tensors (KServe v2 binary extension) are read by detection exactly as their
JSON form is: digits of elements large enough to hold an entity are scanned, the same findings
and the same redacted view result, tensors that cannot hold one stay binary, unread, and those
left clean by redaction go on as their original bytes."""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest

from router.context import RequestContext
from router.privacy import MemoScanner
from router.redaction.actions import Hasher
from router.redaction.detectors import CustomPattern, Detectors
from router.redaction.types import Action
from router.redaction.vault import TokenVault
from router.redaction.walker import RedactionPlan, redact_json
from router.stages.survey_memo import SurveyMemo
from router.v2.inline import (
    SCANNED_FLOATS,
    SCANNED_INTEGERS,
    Unreadable,
    holds_scanned_binary,
    inline_binary_tensors,
    rebinarised,
)

CARD = 4111111111111111
# INT32 holds at most 10 digits: a site pattern (as a bundle's `custom` gives) stands for a
# short numeric identifier there.
BADGE = CustomPattern("BADGE", r"\b77[0-9]{7}\b")
# FP32 holds every integer exactly up to 2**24 (8 digits): a shorter site identifier.
STAFF = CustomPattern("STAFF", r"\b66[0-9]{5}\b")
DETECTORS = Detectors.default((BADGE, STAFF))
TOKENIZE = RedactionPlan(default=Action.TOKENIZE)


def binary_request(**tensors: np.ndarray) -> tuple[dict[str, Any], memoryview]:
    """A v2 header and binary part with each array as a binary input, in order."""
    inputs, chunks = [], []
    for name, array in tensors.items():
        raw = array.tobytes()
        datatype = {"i": "INT", "u": "UINT", "f": "FP"}[array.dtype.kind]
        inputs.append(
            {
                "name": name,
                "datatype": f"{datatype}{array.dtype.itemsize * 8}",
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        chunks.append(raw)
    return {"inputs": inputs}, memoryview(b"".join(chunks))


def json_request(**tensors: np.ndarray) -> dict[str, Any]:
    """The same request with every tensor as JSON `data` (flat, as tritonclient sends it)."""
    inputs = []
    for name, array in tensors.items():
        datatype = {"i": "INT", "u": "UINT", "f": "FP"}[array.dtype.kind]
        inputs.append(
            {
                "name": name,
                "datatype": f"{datatype}{array.dtype.itemsize * 8}",
                "shape": list(array.shape),
                "data": array.ravel().tolist(),
            }
        )
    return {"inputs": inputs}


def walk(doc: Any, plan: RedactionPlan) -> tuple[Any, Counter[str], Counter[str]]:
    """(redacted document, redactions, entities seen) as forwarding's walk makes them."""
    seen: Counter[str] = Counter()
    scanner = MemoScanner(DETECTORS, 1_000_000, 5.0)
    new, counts = redact_json(doc, plan, scanner, TokenVault(), Hasher(b"k" * 32), seen=seen)
    return new, counts, seen


@pytest.mark.parametrize(
    "array",
    [
        np.array([[5, CARD], [0, 42]], dtype="<i8"),
        np.array([7, -CARD, 12], dtype="<i8"),
        np.array([CARD, 5_555_555_555_554_444], dtype="<u8"),
        np.array([3, 771234567, 9], dtype="<i4"),
        np.array([771234567], dtype="<u4"),
    ],
    ids=["int64", "int64-negative", "uint64", "int32", "uint32"],
)
def test_binary_integers_get_the_json_verdict_and_view(array: np.ndarray) -> None:
    """An entity's digits in a binary integer tensor are found and redacted as in the JSON
    form of the same request: same findings, same redacted document."""
    header, binary = binary_request(ids=array)
    inlined = inline_binary_tensors(header, binary)
    assert inlined is not None
    doc, rest = inlined
    assert rest == b""
    as_json = json_request(ids=array)
    assert doc == as_json
    new, counts, seen = walk(doc, TOKENIZE)
    assert seen
    assert sum(counts.values()) >= 1
    assert (new, counts, seen) == walk(as_json, TOKENIZE)
    assert all(str(abs(v)) not in repr(new) for v in array.ravel().tolist() if abs(v) > 10**6)


def test_only_tensors_that_can_hold_an_entity_are_inlined() -> None:
    """Small integers, small floats and huge ones (written with an exponent, as the JSON walk
    leaves them alone) stay binary, in order; the integer tensor holding a card becomes JSON
    between them."""
    small = np.arange(64, dtype="<i8")
    floats = np.array([6.011e18 + 0.5, 0.5], dtype="<f8")
    card = np.array([CARD], dtype="<i8")
    header, binary = binary_request(small=small, floats=floats, card=card, after=small)
    doc, rest = inline_binary_tensors(header, binary) or ({}, b"")
    assert rest == small.tobytes() + floats.tobytes() + small.tobytes()
    assert [("data" in t) for t in doc["inputs"]] == [False, False, True, False]
    assert doc["inputs"][2]["data"] == [CARD]
    assert "parameters" not in doc["inputs"][2]
    assert header["inputs"][2]["parameters"] == {"binary_data_size": 8}  # the original kept


def test_clean_small_integers_inline_nothing() -> None:
    """No element reaches 1,000,000 (what the JSON walk scans): nothing to inline, so the
    request is read (and forwarded) as it came."""
    header, binary = binary_request(
        a=np.arange(64, dtype="<i8") * 15_625 - 1, b=np.array([-999_999], dtype="<i4")
    )
    assert holds_scanned_binary(header)
    assert inline_binary_tensors(header, binary) is None


def test_extremes_are_read_exactly() -> None:
    """The most negative int64 does not overflow the check, and uint64 past 2**63 is exact."""
    header, binary = binary_request(
        a=np.array([np.iinfo(np.int64).min], dtype="<i8"),
        b=np.array([2**64 - 1], dtype="<u8"),
    )
    doc, _ = inline_binary_tensors(header, binary) or ({}, b"")
    assert doc["inputs"][0]["data"] == [-(2**63)]
    assert doc["inputs"][1]["data"] == [2**64 - 1]


def test_narrow_integers_and_fp16_are_not_scanned_types() -> None:
    """INT8/16, UINT8/16 and FP16 cannot reach 7 digits; the wider integer and float types
    are scanned."""
    assert frozenset({"INT32", "INT64", "UINT32", "UINT64"}) == SCANNED_INTEGERS
    assert frozenset({"FP32", "FP64"}) == SCANNED_FLOATS
    header, _ = binary_request(a=np.zeros(2, dtype="<i2"), b=np.zeros(2, dtype="<f2"))
    assert not holds_scanned_binary(header)


@pytest.mark.parametrize("inputs", [5, True, 1.5, "t", None])
def test_inputs_that_are_no_list_hold_no_scanned_binary(inputs: Any) -> None:
    """A header whose `inputs` is no list holds no binary tensor (the decoder's 400 says
    what is wrong), rather than failing the request with a TypeError."""
    assert not holds_scanned_binary({"inputs": inputs})


def test_an_integer_chunk_that_does_not_fit_its_shape_is_unreadable() -> None:
    """Sizes that do not match shape times width cannot be read: refused, not guessed."""
    header, _ = binary_request(ids=np.array([CARD, 1], dtype="<i8"))
    header["inputs"][0]["parameters"]["binary_data_size"] = 12
    with pytest.raises(Unreadable):
        inline_binary_tensors(header, memoryview(struct.pack("<qi", CARD, 1)))


def test_survey_memo_keys_cover_the_binary_part_once_read() -> None:
    """Two requests with the same header, one binary tensor clean and one holding a card, do
    not share a remembered survey once detection read their binary part."""
    memo = SurveyMemo()
    keys = []
    for value in (1_000_001, CARD):
        header, binary = binary_request(ids=np.array([value], dtype="<i8"))
        raw = b'{"inputs":[]}'
        ctx = RequestContext("kserve-v2", "m", None, 0.0, path="/v2/models/m/infer")
        ctx.body, ctx.header_length = raw + bytes(binary), len(raw)
        ctx.inlined = inline_binary_tensors(header, binary)
        keys.append(memo.key(ctx, DETECTORS, ()))
    assert keys[0] != keys[1]


def test_tensors_left_clean_go_back_to_their_bytes() -> None:
    """After redaction, an inlined tensor nothing was redacted from is its original binary
    tensor again (its bytes as sent, in order); the redacted one stays JSON."""
    clean = np.array([1_700_000_000_000, 3], dtype="<i8")
    card = np.array([CARD], dtype="<i8")
    floats = np.array([0.5], dtype="<f4")
    header, binary = binary_request(clean=clean, card=card, floats=floats)
    inlined = inline_binary_tensors(header, binary)
    assert inlined is not None
    redacted, _, _ = walk(inlined[0], TOKENIZE)
    doc, rest = rebinarised(header, binary, inlined, redacted)
    assert rest == clean.tobytes() + floats.tobytes()
    assert doc["inputs"][0] == header["inputs"][0]
    assert doc["inputs"][1]["data"] == ["<CARD_1>"]
    assert doc["inputs"][2] == header["inputs"][2]


def test_inputs_that_no_longer_line_up_stay_as_redacted() -> None:
    """A redacted view with an input fewer (a drop rule) keeps its JSON tensors as they are."""
    header, binary = binary_request(a=np.array([CARD], dtype="<i8"), b=np.zeros(1, "<f4"))
    inlined = inline_binary_tensors(header, binary)
    assert inlined is not None
    fewer = {"inputs": inlined[0]["inputs"][:1]}
    assert rebinarised(header, binary, inlined, fewer) == (fewer, inlined[1])


@pytest.mark.parametrize(
    "array",
    [
        np.array([0.5, float(CARD), -3.25], dtype="<f8"),
        np.array([[1.5, -float(CARD)]], dtype="<f8"),
        np.array([0.125, 6612345.0], dtype="<f4"),  # under 2**24: exact in FP32
    ],
    ids=["fp64", "fp64-negative", "fp32"],
)
def test_integral_floats_get_the_json_verdict_and_view(array: np.ndarray) -> None:
    """An entity's digits held by an integral float (a card number is exact in FP64) are
    found in a binary float tensor and in its JSON form (tritonclient writes 4111111111111111.0)
    alike, as an integer's are: same findings, same redacted document."""
    header, binary = binary_request(x=array)
    inlined = inline_binary_tensors(header, binary)
    assert inlined is not None
    doc, rest = inlined
    assert rest == b""
    as_json = json_request(x=array)
    assert doc == as_json
    new, counts, seen = walk(doc, TOKENIZE)
    assert sum(counts.values()) >= 1
    assert (new, counts, seen) == walk(as_json, TOKENIZE)
    assert all(str(int(abs(v))) not in repr(new) for v in array.ravel().tolist() if abs(v) > 1e6)


def test_binary_fp32_past_2_to_the_24_is_not_inlined() -> None:
    """Past 2**24 FP32 holds only some integers (771234567 is stored as 771234560): its
    elements there are readings, not digits a client wrote, and the tensor stays binary."""
    header, binary = binary_request(x=np.array([0.125, 771234560.0, 2.0**30], dtype="<f4"))
    assert inline_binary_tensors(header, binary) is None


def test_a_json_float_literal_is_scanned_as_the_integer_literal_is() -> None:
    """4111111111111111.0 and 4111111111111111 get the same finding, in a tensor's data
    and as a lone value; a float that is not integral, or a small one, is left alone."""
    as_float = {"a": [0.5, float(CARD)], "b": float(CARD), "c": [1234567.5, 42.0]}
    as_int = {"a": [0.5, CARD], "b": CARD, "c": [1234567.5, 42.0]}
    new_float, counts_float, _ = walk(as_float, TOKENIZE)
    new_int, counts_int, _ = walk(as_int, TOKENIZE)
    assert counts_float == counts_int == Counter({"CARD": 2})
    assert new_float == new_int
    assert new_float["c"] == [1234567.5, 42.0]


def test_floats_that_cannot_show_an_entity_stay_binary() -> None:
    """Small floats, NaN, infinities, floats past 1e16 (written with an exponent), FP32 past
    2**24 and readings of fewer than 12 digits with a fraction (epoch seconds) hold no digits
    of an entity a client wrote: nothing is inlined, the request is read as it came."""
    values = [0.5, 65504.0, np.nan, np.inf, -np.inf, 3.0e300, 1e16, -6.011e18, 1_700_000_000.25]
    header, binary = binary_request(
        a=np.array(values, dtype="<f8"),
        b=np.array([0.25, 2.0**30, -(2.0**25), 5_000_000.5], dtype="<f4"),
    )
    assert holds_scanned_binary(header)
    assert inline_binary_tensors(header, binary) is None


def test_large_floats_with_a_fraction_are_read_and_go_back_clean() -> None:
    """Floats of 12 digits or more with a fraction show those digits in their JSON form:
    they are read like integral ones, and go on as their bytes when they hold nothing."""
    fp64 = np.array([1234567.5, -9.75e12 + 0.5], dtype="<f8")
    header, binary = binary_request(a=fp64)
    inlined = inline_binary_tensors(header, binary)
    assert inlined is not None
    assert inlined[0] == json_request(a=fp64)
    redacted, counts, _ = walk(inlined[0], TOKENIZE)
    assert not counts
    doc, rest = rebinarised(header, binary, inlined, redacted)
    assert (doc, rest) == (header, fp64.tobytes())


# A Troy card number past 2**53, where FP64 holds the even integers exactly and its JSON form
# (orjson's, Python's) still writes every digit: 9792000000000052.0.
TROY = 9792000000000052


@pytest.mark.parametrize("detectors", [Detectors.default(), DETECTORS], ids=["joined", "alone"])
def test_a_float_shows_the_digits_its_json_form_is_written_with(detectors: Detectors) -> None:
    """A card number's digits written as a float with a fraction (4111111111111111.5) or as
    an FP64 past 2**53 (9792000000000052.0) are found as the integer's are, in a tensor and
    alone, and none of them is left in the redacted document."""
    doc = {
        "a": [0.5, CARD + 0.5, float(TROY)],
        "b": -(CARD + 0.5),
        "c": float(TROY),
        "d": [1.5, 2.5],
    }
    scanner = MemoScanner(detectors, 1_000_000, 5.0)
    new, counts = redact_json(doc, TOKENIZE, scanner, TokenVault(), Hasher(b"k" * 32))
    assert counts == Counter({"CARD": 4})
    text = orjson.dumps(new).decode()
    assert str(CARD) not in text
    assert str(TROY) not in text
    assert new["d"] == [1.5, 2.5]


def test_binary_fp64_with_a_fraction_or_past_2_to_the_53_gets_the_json_verdict() -> None:
    """The same floats in a binary FP64 tensor are inlined and get their JSON form's verdict
    and view: the card numbers found and redacted, not sent on as their 8 bytes each."""
    array = np.array([0.5, CARD + 0.5, float(TROY)], dtype="<f8")
    header, binary = binary_request(x=array)
    inlined = inline_binary_tensors(header, binary)
    assert inlined is not None
    assert inlined[0] == json_request(x=array)
    new, counts, seen = walk(inlined[0], TOKENIZE)
    assert counts == seen == Counter({"CARD": 2})
    assert (new, counts, seen) == walk(json_request(x=array), TOKENIZE)


def test_clean_integral_floats_go_back_to_their_bytes() -> None:
    """An FP64 tensor of integral values that hold nothing is read, then sent as its bytes."""
    stamps = np.array([1.7e12, 1_000_001.0], dtype="<f8")
    card = np.array([CARD], dtype="<i8")
    header, binary = binary_request(stamps=stamps, card=card)
    inlined = inline_binary_tensors(header, binary)
    assert inlined is not None
    assert inlined[0]["inputs"][0]["data"] == [1.7e12, 1_000_001.0]
    redacted, _, _ = walk(inlined[0], TOKENIZE)
    doc, rest = rebinarised(header, binary, inlined, redacted)
    assert rest == stamps.tobytes()
    assert doc["inputs"][0] == header["inputs"][0]
