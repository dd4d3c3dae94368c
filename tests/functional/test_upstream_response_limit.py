"""A non-stream upstream answer is held whole only up to its cluster's `max_response_bytes`:
a longer one is 502 upstream_response_too_large (not retried, not an ejection), its connection
closed, never reused; the next target is tried. Real fake upstreams and the real router app on
127.0.0.1, with both upstream clients."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from pydantic import ValidationError

from router.api.state import UPSTREAMS
from router.settings import ClusterSettings
from router.testing import Behaviour, FakeUpstream, router_in_front_of, serving

MODEL = "gpt-test"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
LIMIT = 64 * 1024
LONG = "x" * (4 * LIMIT)  # an answer four times the limit


async def start_fake(
    stack: contextlib.AsyncExitStack, name: str, reply_text: str | None = None
) -> tuple[FakeUpstream, str, list[int]]:
    """A fake upstream, and the client ports its requests came from (one per connection)."""
    fake = FakeUpstream(name=name, models=(MODEL,), behaviour=Behaviour(reply_text=reply_text))
    ports: list[int] = []

    @web.middleware
    async def peer(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "POST" and request.transport is not None:
            ports.append(request.transport.get_extra_info("peername")[1])
        response: web.StreamResponse = await handler(request)
        return response

    app = fake.app()
    app.middlewares.append(peer)
    return fake, await stack.enter_async_context(serving(app)), ports


def cluster(name: str, tier: str, url: str, client: str, **overrides: Any) -> dict[str, Any]:
    return {
        "name": name,
        "tier": tier,
        "protocols": ["openai"],
        "models": [MODEL],
        "endpoints": [{"url": url}],
        "client": client,
        "request_timeout_ms": 3000,
        "health_check": {"enabled": False},
        "retry": {"base_backoff_ms": 1, "max_backoff_ms": 5},
        **overrides,
    }


async def chat(
    http: aiohttp.ClientSession, url: str, doc: dict[str, Any] = CHAT
) -> tuple[int, Any, bytes]:
    async with asyncio.timeout(10):
        async with http.post(f"{url}/v1/chat/completions", json=doc) as response:
            return response.status, response.headers, await response.read()


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
class TestResponseLimit:
    async def test_an_answer_over_the_limit_is_a_clear_502(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        client: str,
    ) -> None:
        """Over max_response_bytes: 502 upstream_response_too_large, sent once (the same
        request would bring the same answer), the endpoint not blamed, and the connection
        closed: the next request comes on a new one and gets its whole answer."""
        fake, fake_url, ports = await start_fake(stack, "regional", reply_text=LONG)
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", fake_url, client, max_response_bytes=LIMIT),
        )
        status, headers, body = await chat(http, url)
        assert status == 502
        error = orjson.loads(body)["error"]
        assert error["code"] == "upstream_response_too_large"
        assert str(LIMIT) in error["message"]
        assert "regional" in error["message"]
        assert headers.get("x-should-retry") == "false"
        assert len(fake.received) == 1
        regional = app[UPSTREAMS].clusters["regional"]
        assert regional.counters.failures == 0
        fake.behaviour.reply_text = "short"
        status, _, body = await chat(http, url)
        assert status == 200, body
        assert orjson.loads(body)["choices"][0]["message"]["content"] == "short"
        assert len(ports) == 2
        assert ports[0] != ports[1]  # the cut answer's connection was not reused

    async def test_the_next_target_is_tried(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        client: str,
    ) -> None:
        """A cluster whose limit an answer passes hands over to the next target, whose own
        (default, 64 MiB) limit holds the same answer."""
        _, regional_url, _ = await start_fake(stack, "regional", reply_text=LONG)
        _, central_url, _ = await start_fake(stack, "central", reply_text=LONG)
        _, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", regional_url, client, max_response_bytes=LIMIT),
            cluster("central", "central", central_url, client),
        )
        status, headers, body = await chat(http, url)
        assert status == 200
        assert len(body) > 4 * LIMIT
        assert headers["X-Route-Reason"] == (
            "failed:regional:upstream_response_too_large,fallback:central"
        )

    async def test_a_json_answer_to_a_stream_request_is_limited_too(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        client: str,
    ) -> None:
        """A stream request answered with a long JSON error (read whole after all) is held
        to the same limit."""
        fake, fake_url, _ = await start_fake(stack, "regional")
        fake.behaviour.fail_status = 400
        fake.behaviour.fail_body = orjson.dumps({"error": {"message": LONG}})
        _, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", fake_url, client, max_response_bytes=LIMIT),
        )
        status, _, body = await chat(http, url, {**CHAT, "stream": True})
        assert status == 502
        assert orjson.loads(body)["error"]["code"] == "upstream_response_too_large"


def test_the_limit_has_a_documented_default_and_bounds() -> None:
    """64 MiB unless configured; below 1 KiB or above 1 GiB is a config error."""
    base = {"name": "r", "tier": "regional", "endpoints": [{"url": "http://127.0.0.1:1"}]}
    assert ClusterSettings.model_validate(base).max_response_bytes == 64 * 1024 * 1024
    for bad in (0, 1023, 1024**3 + 1, "big"):
        with pytest.raises(ValidationError, match="max_response_bytes"):
            ClusterSettings.model_validate({**base, "max_response_bytes": bad})
