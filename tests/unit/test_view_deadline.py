"""The CPU deadline bounds each detection walk, not the age of the request: a walk for a
fallback tier, after a first try that took its time, gets a budget of its own; one that runs out
of it fails closed with 422, never a 500."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from router import privacy as privacy_module
from router import tier_view
from router.context import RequestContext
from router.errors import DetectionFailed
from router.policy.bundle import load_bundle
from router.privacy import MemoScanner, Privacy, survey
from router.resources import default_policy_bundle
from router.stages.classify import OFF_LOOP_BYTES
from router.tier_view import prepare_view, view_for

PRIVACY = Privacy.build(load_bundle(default_policy_bundle()), None, b"s" * 32)
TEXT = "order 20261127: mail ann.lee@example.com, call +44 20 7946 0958, card 4111 1111 1111 1111"


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(privacy_module.time, "monotonic", fake)
    return fake


def _surveyed(budget_s: float) -> RequestContext:
    document: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": TEXT}]}
    ctx = RequestContext(
        api="openai", model="m", version=None, deadline=0.0, document=document,
        path="/v1/chat/completions",
        scanner=MemoScanner(PRIVACY.detectors, 1_000_000, budget_s),
    )  # fmt: skip
    ctx.entities = survey(PRIVACY, ctx)
    return ctx


def test_a_later_walk_gets_its_own_budget(clock: Clock) -> None:
    """Ten seconds after the survey (a slow first try), the walk for central still redacts."""
    ctx = _surveyed(0.2)
    clock.now += 10.0
    view = view_for(ctx, "central", PRIVACY)
    assert view.document is not None
    content = view.document["messages"][0]["content"]
    for value in ("ann.lee", "4111", "7946"):
        assert value not in content


def test_a_walk_out_of_time_fails_closed(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A walk that itself runs past the budget is a 422 detection_failed, not an exception
    the handler would answer with 500."""
    ctx = _surveyed(0.2)
    real_scan = MemoScanner.scan

    def slow_scan(self: MemoScanner, text: str) -> Any:
        clock.now += 1.0  # every scan in the walk takes a second
        return real_scan(self, text)

    monkeypatch.setattr(MemoScanner, "scan", slow_scan)
    with pytest.raises(DetectionFailed):
        view_for(ctx, "central", PRIVACY)


async def test_a_large_body_is_walked_off_the_loop_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body past the off-loop size is redacted on a worker thread, once per tier: the retry
    or the sample that asks again gets the same view, and the same redaction counts."""
    ctx = _surveyed(5.0)
    ctx.body = b" " * (OFF_LOOP_BYTES + 1)
    threads: list[str] = []
    real = tier_view.redact_json

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(tier_view, "redact_json", recording)
    await prepare_view(ctx, "central", PRIVACY)
    assert len(threads) == 1
    assert threads[0] != threading.main_thread().name
    first = view_for(ctx, "central", PRIVACY)
    assert view_for(ctx, "central", PRIVACY) is first
    assert len(threads) == 1
    assert ctx.redactions == {"EMAIL": 1, "PHONE": 1, "CARD": 1}


def _remembered(rewrites: bool) -> RequestContext:
    """A clean request whose survey a memo skipped (a repeat of a cacheable request)."""
    document: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    ctx = RequestContext(
        api="openai", model="m", version=None, deadline=0.0, document=document,
        path="/v1/chat/completions",
        scanner=MemoScanner(PRIVACY.detectors, 1_000_000, 0.2),
    )  # fmt: skip
    ctx.scanner.rewrites = rewrites  # as the memo remembered it
    return ctx


def test_a_remembered_clean_survey_needs_no_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing found and no string to re-encode, as the memo remembers: the view is the
    document re-encoded, without a survey or a walk (the memo's whole point)."""
    monkeypatch.setattr(tier_view, "survey", lambda *_: pytest.fail("walked"))
    view = view_for(_remembered(False), "central", PRIVACY)
    assert view.reencoded
    assert not view.changed


def test_a_remembered_survey_that_rewrites_is_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request whose walk re-encodes a JSON string (the memo says so) is still walked."""
    walked: list[bool] = []
    real_survey = tier_view.survey

    def counting(privacy: Privacy, ctx: RequestContext) -> Any:
        walked.append(True)
        return real_survey(privacy, ctx)

    monkeypatch.setattr(tier_view, "survey", counting)
    view_for(_remembered(True), "central", PRIVACY)
    assert walked
