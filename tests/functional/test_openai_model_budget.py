"""A per-model default budget (`routing.models.<m>.budget_ms`) applies to OpenAI requests too:
the model is named in the body, so the budget is set once the body is parsed."""

from __future__ import annotations

import httpx

from router.testing import AppThread, FakeUpstream, RouterThread, chat_forwarding_settings

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


def test_model_budget_reaches_the_upstream() -> None:
    """A chat request stating no budget goes upstream with what remains of its model's 2 s,
    not of the route's 300 s."""
    fake = FakeUpstream("central")
    with AppThread(fake.app) as upstream:
        settings = chat_forwarding_settings(
            upstream.url, routing={"models": {"gpt-test": {"budget_ms": 2000}}}
        )
        with RouterThread(settings) as router:
            reply = httpx.post(f"{router.url}/v1/chat/completions", json=CHAT, timeout=10)
    assert reply.status_code == 200
    (sent,) = fake.requests_to("/v1/chat/completions")
    assert 1000 < int(sent.headers["X-Latency-Budget-Ms"]) <= 2000
