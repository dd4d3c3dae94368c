"""The survey memo: one key per distinct surveyed content, and nothing else shares it."""

from __future__ import annotations

import gc
from collections import Counter

from multidict import CIMultiDict, CIMultiDictProxy

from router.audit.record import Digester
from router.context import RequestContext
from router.heap import YOUNG_THRESHOLD, settle_after_startup
from router.stages.survey_memo import SurveyMemo

SCANNED = ("X-User",)
R1, R2 = object(), object()  # two generations of detectors


def _ctx(body: bytes = b'{"a":"b"}', path: str = "/v1/x", **headers: str) -> RequestContext:
    held = CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}))
    return RequestContext(api="openai", model="m", version=None, deadline=0.0, path=path,
                          headers=held, body=body)  # fmt: skip


def test_same_content_same_key() -> None:
    """Two requests with the same body, path and scanned headers share a key."""
    memo = SurveyMemo()
    first = memo.key(_ctx(X_User="a@example.com"), R1, SCANNED)
    assert first == memo.key(_ctx(X_User="a@example.com"), R1, SCANNED)


def test_every_surveyed_part_changes_the_key() -> None:
    """Body, path and query, and a scanned header's value each give another key."""
    memo = SurveyMemo()
    base = memo.key(_ctx(X_User="x"), R1, SCANNED)
    others = [
        memo.key(_ctx(b'{"a":"c"}', X_User="x"), R1, SCANNED),
        memo.key(_ctx(path="/v1/x?q=1", X_User="x"), R1, SCANNED),
        memo.key(_ctx(X_User="a@example.com"), R1, SCANNED),
        memo.key(_ctx(), R1, SCANNED),
    ]
    assert len({base, *others}) == 5


def test_unscanned_headers_do_not_matter() -> None:
    """A header the survey does not read leaves the key alone (so hits stay hits)."""
    memo = SurveyMemo()
    assert memo.key(_ctx(Accept="a"), R1, SCANNED) == memo.key(_ctx(Accept="b"), R1, SCANNED)


def test_v2_binary_part_is_not_keyed() -> None:
    """Only the JSON header of a binary v2 body is surveyed, so only it is keyed."""
    memo = SurveyMemo()
    one, two = _ctx(b'{"a":1}\x00\x01'), _ctx(b'{"a":1}\x00\x02')
    one.header_length = two.header_length = 7
    assert memo.key(one, R1, ()) == memo.key(two, R1, ())


def test_new_detectors_forget() -> None:
    """Other detectors (a reloaded bundle) empty the memo: they may find other things."""
    memo = SurveyMemo()
    key = memo.key(_ctx(), R1, SCANNED)
    memo.put(key, Counter({"EMAIL": 2}), rewrites=True)
    assert memo.get(key) == (Counter({"EMAIL": 2}), True)
    assert memo.get(memo.key(_ctx(), R2, SCANNED)) is None
    assert memo.get(key) is None


def test_digest_equals_streamed_digest() -> None:
    """The precomputed-state digest equals the streamed HMAC of the same label and bytes."""
    digester = Digester(b"s" * 32)
    streamed = digester.stream("$.inputs[0].data")
    streamed.update(b"[1,2,3]")
    assert digester.digest("$.inputs[0].data", b"[1,2,3]") == streamed.hexdigest()


def test_settling_freezes_startup_objects() -> None:
    """After settling, start-up objects are frozen out of collections and young ones wait."""
    before = gc.get_threshold()
    try:
        settle_after_startup()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
