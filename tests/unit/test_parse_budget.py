"""An OpenAI request names its model in the body: the model's own default latency budget
(budgets.yaml `models:`, or `routing.models.<m>.budget_ms`) applies once the body is parsed."""

from __future__ import annotations

import asyncio
import time

import pytest
from multidict import CIMultiDict

from router.budget import budget_ms, model_budget
from router.context import RequestContext
from router.errors import BadRequest
from router.policy.model import Budgets
from router.settings import RoutingSettings
from router.stages.parse import ParseOpenAIRequest

BODY = b'{"model": "gpt-slow", "messages": []}'


def _ctx(headers: dict[str, str]) -> RequestContext:
    now = asyncio.get_running_loop().time()
    return RequestContext(
        api="openai",
        model="",
        version=None,
        deadline=now + 300.0,  # the route's default
        started=time.perf_counter(),
        headers=CIMultiDict(headers),
        body=BODY,
    )


def _stage(bundle: Budgets, routing: RoutingSettings) -> ParseOpenAIRequest:
    return ParseOpenAIRequest(lambda model: model_budget(bundle, routing, model))


async def test_site_model_budget_applies_to_openai() -> None:
    """routing.models.<m>.budget_ms sets an OpenAI request's deadline when it states none."""
    routing = RoutingSettings.model_validate({"models": {"gpt-slow": {"budget_ms": 2000}}})
    ctx = _ctx({})
    await _stage(Budgets(), routing)(ctx)
    left = ctx.deadline - asyncio.get_running_loop().time()
    assert 1.5 < left <= 2.0


async def test_bundle_model_budget_comes_first() -> None:
    """budgets.yaml's per-model budget wins over the site's, as for KServe v2."""
    routing = RoutingSettings.model_validate({"models": {"gpt-slow": {"budget_ms": 2000}}})
    ctx = _ctx({})
    await _stage(Budgets(models={"gpt-slow": 7000}), routing)(ctx)
    left = ctx.deadline - asyncio.get_running_loop().time()
    assert 6.5 < left <= 7.0


async def test_stated_budget_is_kept() -> None:
    """A client's X-Latency-Budget-Ms is never replaced by a model default."""
    routing = RoutingSettings.model_validate({"models": {"gpt-slow": {"budget_ms": 2000}}})
    ctx = _ctx({"x-latency-budget-ms": "300000"})
    deadline = ctx.deadline
    await _stage(Budgets(), routing)(ctx)
    assert ctx.deadline == deadline


async def test_model_without_budget_keeps_the_route_default() -> None:
    """A model with no budget of its own keeps the route's default deadline."""
    ctx = _ctx({})
    deadline = ctx.deadline
    await _stage(Budgets(), RoutingSettings())(ctx)
    assert ctx.deadline == deadline


@pytest.mark.parametrize("raw", ["0", "-1", "86400001"])
def test_out_of_range_budget_message_matches_the_rule(raw: str) -> None:
    """A rejected budget's message states the bounds the check applies (0 is not allowed)."""
    with pytest.raises(BadRequest) as caught:
        budget_ms({"X-Latency-Budget-Ms": raw}, 1000.0)
    assert "more than 0 and at most 86400000" in str(caught.value)
    assert "between 0" not in str(caught.value)


def test_budget_bounds_are_inclusive_at_the_top() -> None:
    """The largest allowed budget is accepted, the smallest positive one too."""
    assert budget_ms({"X-Latency-Budget-Ms": "86400000"}, 1.0) == 86_400_000
    assert budget_ms({"X-Latency-Budget-Ms": "0.5"}, 1.0) == 0.5
