"""Samples spooled for the centre hold no value the request's tokens stood for (issue 4, P4):
an answer may repeat a value without the context that made it detectable in the request (a
date of birth without "born", a national id without its name), and the request's own vault
still knows it."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.context import Reply, RequestContext
from router.policy.bundle import load_bundle
from router.privacy import MemoScanner, Privacy
from router.resources import default_policy_bundle
from router.store_forward import StoreAndForward


class RecordingSpool:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    async def put(self, kind: str, payload: bytes, key: str = "") -> int:
        self.payloads.append(payload)
        return len(self.payloads)


@pytest.fixture
def privacy(tmp_path: Path) -> Privacy:
    bundle = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), bundle)
    (bundle / "sampling.yaml").write_text("default: 1.0\n", encoding="utf-8")
    return Privacy.build(load_bundle(bundle), None, b"s" * 32)


@pytest.mark.parametrize(
    ("asked", "value", "answered"),
    [
        ("I was born on 03/02/1990, help", "03/02/1990", "Noted: 03/02/1990."),
        ("my ssn is 536221234", "536221234", "The number 536221234 is stored"),
        ("Steuer-ID 86095742719", "86095742719", "ID 86095742719 ok"),
    ],
)
async def test_values_repeated_out_of_context_stay_tokens(
    privacy: Privacy, asked: str, value: str, answered: str
) -> None:
    """The request's value is found in context; the answer's bare copy is tokenized too; the
    request's own redaction counts are left as they were."""
    spool = RecordingSpool()
    store = StoreAndForward(spool, privacy, "site-1")  # type: ignore[arg-type]
    detection = privacy.bundle.detection
    scanner = MemoScanner(privacy.detectors, detection.max_body_bytes, 5.0)
    document: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": asked}]}
    found: Counter[str] = Counter()
    from router.redaction.vault import TokenVault
    from router.redaction.walker import redact_json

    redact_json(document, privacy.survey, scanner, TokenVault(), privacy.hasher, seen=found)
    assert found  # the request's value is detected where it was asked
    ctx = RequestContext(
        api="openai", model="m", version=None, deadline=0.0, document=document, scanner=scanner
    )
    ctx.entities = found
    ctx.audit_id = "a1"
    served = Counter({"SERVED_TIER_COUNTS": 1})
    ctx.redactions = served
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answered}}]}
    store.maybe_sample(ctx, Reply(orjson.dumps(answer)))
    await store.drain_pending()
    (payload,) = spool.payloads
    assert ctx.redactions == served  # the answering tier's counts, not the sample's
    assert value.encode() not in payload
    sample = orjson.loads(payload)
    assert "_1>" in sample["response"]["choices"][0]["message"]["content"]


async def test_a_v2_answer_with_non_finite_values_is_still_sampled(privacy: Privacy) -> None:
    """A KServe v2 JSON answer with bare NaN/Infinity (as Triton and this router write them)
    is sampled like any other, its tokens kept as tokens and the non-finite values as null
    (JSON has no other form for them); it was dropped as unreadable."""
    spool = RecordingSpool()
    store = StoreAndForward(spool, privacy, "site-1")  # type: ignore[arg-type]
    scanner = MemoScanner(privacy.detectors, privacy.bundle.detection.max_body_bytes, 5.0)
    document: dict[str, Any] = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}
    ctx = RequestContext(
        api="kserve-v2", model="m", version=None, deadline=0.0, document=document, scanner=scanner
    )
    ctx.audit_id = "a2"
    body = (
        b'{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[3],'
        b'"data":[NaN,Infinity,0.5]}]}'
    )
    store.maybe_sample(ctx, Reply(body))
    await store.drain_pending()
    (payload,) = spool.payloads
    sample = orjson.loads(payload)
    assert sample["response"]["outputs"][0]["data"] == [None, None, 0.5]


def _clean_chat_context(privacy: Privacy, declared: str) -> RequestContext:
    scanner = MemoScanner(privacy.detectors, privacy.bundle.detection.max_body_bytes, 5.0)
    scanner.surveyed = True
    document = {"model": "m", "messages": [{"role": "user", "content": "restricted-canary"}]}
    ctx = RequestContext(
        api="openai", model="m", version=None, deadline=0.0, document=document, scanner=scanner
    )
    ctx.declared_class = ctx.data_class = declared
    ctx.audit_id = "a3"
    return ctx


@pytest.mark.parametrize(
    ("declared", "collector", "sampled"),
    [
        ("internal", "", True),
        ("secret", "", False),  # residency keeps a declared secret off the central tier
        ("personal", "EU", True),
        ("personal", "", False),  # an untagged collector is not the origin's jurisdiction
        ("personal", "US", False),
    ],
)
async def test_a_sample_goes_only_where_its_request_may_go(
    privacy: Privacy, declared: str, collector: str, sampled: bool
) -> None:
    """A sample is the request as the central tier may see it, sent to the central collector:
    residency decides it as it decides a central target. A request declared secret (nothing
    found to redact, so its view is the request as sent) and a personal one bound to its
    jurisdiction were spooled for the collector whatever the rules."""
    spool = RecordingSpool()
    store = StoreAndForward(  # type: ignore[arg-type]
        spool, privacy, "site-1", origin="EU", collector_jurisdiction=collector
    )
    ctx = _clean_chat_context(privacy, declared)
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
    store.maybe_sample(ctx, Reply(orjson.dumps(answer)))
    await store.drain_pending()
    assert bool(spool.payloads) is sampled


@pytest.mark.parametrize(
    ("declared", "collector", "sampled"),
    [("internal", "", True), ("secret", "", False), ("personal", "US", False)],
)
async def test_a_streamed_sample_goes_only_where_its_request_may_go(
    privacy: Privacy, declared: str, collector: str, sampled: bool
) -> None:
    """A streamed answer's sample is held to residency as a whole answer's is: it was spooled
    for the collector whatever the rules (the stream path skipped the residency check)."""
    spool = RecordingSpool()
    store = StoreAndForward(  # type: ignore[arg-type]
        spool, privacy, "site-1", origin="EU", collector_jurisdiction=collector
    )
    ctx = _clean_chat_context(privacy, declared)
    event = b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\ndata: [DONE]\n\n'
    copy = store.stream_copy(ctx, Reply(b"", stream=_chunks(event)))
    if copy is not None:
        async for _ in copy.passing(_chunks(event)):
            pass
        store.sample_stream(ctx, copy)
    await store.drain_pending()
    assert bool(spool.payloads) is sampled


async def _chunks(*chunks: bytes) -> Any:
    for chunk in chunks:
        yield chunk
