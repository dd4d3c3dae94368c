"""Resilience of tiered forwarding (TESTING.md R1-R7, short versions): a real router app and
real fake upstreams on 127.0.0.1, faults injected by the upstreams themselves or by FaultProxy,
and what the client sees and what the upstreams received counted.

Timeouts, back-offs, ejection times and health-check intervals are tiny so the file runs in
seconds; every client call is bounded by `asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from router import forwarding
from router.api.state import UPSTREAMS
from router.app import build_app
from router.settings import Settings
from router.testing import Behaviour, FakeUpstream, FaultProxy, router_in_front_of, serving
from router.upstreams.cluster import Cluster

MODEL = "gpt-test"
LIMIT_S = 10.0  # no single client call may take longer: a hung client fails the test
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
EMBED = {"model": MODEL, "input": ["a", "b"]}


# -- plumbing ------------------------------------------------------------------------------


async def start_fake(
    stack: contextlib.AsyncExitStack, name: str, *, app_hook: Any = None, **behaviour: Any
) -> tuple[FakeUpstream, str]:
    fake = FakeUpstream(name=name, models=(MODEL,), behaviour=Behaviour(**behaviour))
    app = fake.app()
    if app_hook is not None:
        app_hook(app)
    url = await stack.enter_async_context(serving(app))
    return fake, url


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def cluster(name: str, tier: str, *urls: str, **overrides: Any) -> dict[str, Any]:
    """A cluster config with test-sized timeouts; health checks off unless asked for."""
    base: dict[str, Any] = {
        "name": name,
        "tier": tier,
        "protocols": ["openai"],
        "models": [MODEL],
        "endpoints": [{"url": u} for u in urls],
        "connect_timeout_ms": 500,
        "request_timeout_ms": 3000,
        "health_check": {"enabled": False, "interval_s": 0.1, "timeout_s": 0.2},
        "retry": {"base_backoff_ms": 1, "max_backoff_ms": 5},
    }
    return _merge(base, overrides)


def clusters_of(app: web.Application) -> dict[str, Cluster]:
    return app[UPSTREAMS].clusters


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def reason(self) -> str:
        return str(self.headers.get("X-Route-Reason", ""))

    @property
    def tier(self) -> str:
        return str(self.headers.get("X-Served-By-Tier", ""))

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.json()["error"]["code"])


async def post(
    http: aiohttp.ClientSession,
    url: str,
    doc: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> Answer:
    async with asyncio.timeout(LIMIT_S):
        async with http.post(url, json=doc, headers=headers) as response:
            return Answer(response.status, response.headers, await response.read())


async def eventually(check: Callable[[], bool], what: str, limit_s: float = 5.0) -> None:
    """Poll `check` (state, not time) until it holds, failing after `limit_s`."""
    for _ in range(int(limit_s / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"not within {limit_s} s: {what}")


def sse_events(body: bytes) -> list[bytes]:
    return [
        block[len(b"data: ") :]
        for block in body.replace(b"\r\n", b"\n").split(b"\n\n")
        if block.startswith(b"data: ")
    ]


def closed_port() -> int:
    """A loopback port with nothing listening on it (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- R1: outlier ejection ------------------------------------------------------------------


class TestOutlierEjection:
    async def test_r1_out_of_budget_answers_never_eject(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """A chained layer-router answers 504 when the budget we passed on cannot be met:
        that is the client's tight budget, not a broken tier. Eight of them in a row reach
        the client as 504, count no failure and eject nothing (else clients with tight
        budgets could take a tier away from everyone)."""
        _, url_504 = await start_fake(stack, "central", fail_status=504)
        app, url = await router_in_front_of(stack, tmp_path, cluster("central", "central", url_504))
        central = clusters_of(app)["central"]
        for _ in range(8):
            answer = await post(
                http, f"{url}/v1/chat/completions", CHAT, {"X-Latency-Budget-Ms": "2000"}
            )
            assert answer.status == 504, answer.body
        assert central.counters.failures == 0
        assert central.counters.ejections == 0
        assert len(central.live(asyncio.get_running_loop().time())) == 1

    async def test_r1_failing_endpoint_ejected_then_back(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """One endpoint of two answers 500: after 5 consecutive failures it is ejected and gets
        no traffic; it is back after base x 1, ejected again for base x 2 (clients see only
        200s: each failure is retried on the good endpoint)."""
        base = 0.5
        bad, bad_url = await start_fake(stack, "bad", fail_status=500)
        _, good_url = await start_fake(stack, "good")
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster(
                "regional",
                "regional",
                bad_url,
                good_url,
                outlier={
                    "consecutive_failures": 5,
                    "base_ejection_s": base,
                    "max_ejection_s": 10,
                    "max_ejected_percent": 50,
                },
                retry={"max_attempts": 2},
            ),
        )
        regional = clusters_of(app)["regional"]
        health = regional.endpoints[0].health
        loop = asyncio.get_running_loop()

        async def until_ejections(count: int) -> float:
            for _ in range(300):
                answer = await post(http, f"{url}/v1/embeddings", EMBED)
                assert answer.status == 200, answer.body
                if regional.counters.ejections == count:
                    return loop.time()
            pytest.fail(f"the failing endpoint was not ejected ({count})")

        ejected_at = await until_ejections(1)
        assert len(bad.received) == 5
        assert health.times_ejected == 1
        assert 0 < health.ejected_until - ejected_at <= base

        # While ejected, the bad endpoint receives nothing.
        during = 0
        for _ in range(10):
            answer = await post(http, f"{url}/v1/embeddings", EMBED)
            assert answer.status == 200
            if loop.time() < health.ejected_until:
                during += 1
                assert len(bad.received) == 5
        assert during > 0

        # Back after base x 1: it is picked again (and fails again).
        await asyncio.sleep(max(0.0, health.ejected_until - loop.time()))
        for _ in range(60):
            await post(http, f"{url}/v1/embeddings", EMBED)
            if len(bad.received) > 5:
                break
        assert len(bad.received) > 5

        # Ejected a second time: for base x 2.
        ejected_at = await until_ejections(2)
        assert health.times_ejected == 2
        assert base < health.ejected_until - ejected_at <= 2 * base
        seen = len(bad.received)
        await asyncio.sleep(max(0.0, health.ejected_until - loop.time()))
        for _ in range(60):
            await post(http, f"{url}/v1/embeddings", EMBED)
            if len(bad.received) > seen:
                break
        assert len(bad.received) > seen
        assert regional.counters.overflows == 0


# -- R2, R3: our own concurrency cap -------------------------------------------------------


class TestBreaker:
    async def test_r2_overflow_is_ours_not_the_upstreams(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """max_connections 1, max_pending 0, a slow upstream, four requests at once: one is
        served, three get 503 upstream_overflow with Retry-After, counted as overflows; the
        upstream is neither blamed nor ejected and saw one request."""
        slow, slow_url = await start_fake(stack, "slow", delay_s=0.5)
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", slow_url, max_connections=1, max_pending=0),
        )
        regional = clusters_of(app)["regional"]
        answers = await asyncio.gather(
            *(post(http, f"{url}/v1/chat/completions", CHAT) for _ in range(4))
        )
        assert sorted(a.status for a in answers) == [200, 503, 503, 503]
        for answer in answers:
            if answer.status == 503:
                assert answer.code == "upstream_overflow"
                assert int(answer.headers["Retry-After"]) >= 1
                assert answer.reason == "failed:regional:upstream_overflow"
        assert regional.counters.overflows == 3
        assert regional.counters.failures == 0
        assert regional.counters.ejections == 0
        assert len(regional.live(asyncio.get_running_loop().time())) == 1
        assert len(slow.received) == 1
        assert (await post(http, f"{url}/v1/chat/completions", CHAT)).status == 200

    async def test_r2_a_stream_holds_its_place_until_it_ends(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """max_connections 1, max_pending 0, one long stream in progress: requests meanwhile
        are shed at once (503 upstream_overflow), not queued behind the stream until they
        time out and blamed on the upstream; once the stream ends the place is free again."""
        fake, fake_url = await start_fake(stack, "slow", stream_chunks=8, stream_delay_s=0.1)
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster(
                "regional",
                "regional",
                fake_url,
                max_connections=1,
                max_pending=0,
                request_timeout_ms=500,
            ),
        )
        regional = clusters_of(app)["regional"]
        body = {**CHAT, "stream": True}
        async with asyncio.timeout(LIMIT_S):
            async with http.post(f"{url}/v1/chat/completions", json=body) as streaming:
                assert streaming.status == 200
                await streaming.content.readuntil(b"\n\n")  # the stream is under way
                assert regional.active == 1
                for _ in range(3):
                    answer = await post(http, f"{url}/v1/chat/completions", CHAT)
                    assert answer.status == 503, answer.body
                    assert answer.code == "upstream_overflow"
                assert b"[DONE]" in await streaming.read()
        await eventually(lambda: regional.active == 0, "the stream gave its place back")
        assert regional.counters.overflows == 3
        assert regional.counters.failures == 0
        assert len(fake.received) == 1
        assert (await post(http, f"{url}/v1/chat/completions", CHAT)).status == 200

    async def test_r2_a_stream_cut_by_its_client_gives_its_place_back(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """Clients that hang up mid-stream free the stream's place in the breaker and its
        connection at once, not whenever a garbage collection breaks the cycle the failed
        write's traceback makes (collections are off here to show it)."""
        _, fake_url = await start_fake(stack, "slow", stream_chunks=50, stream_delay_s=0.05)
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", fake_url, max_connections=1, max_pending=0),
        )
        regional = clusters_of(app)["regional"]
        gc.disable()
        try:
            for _ in range(3):
                async with asyncio.timeout(LIMIT_S):
                    async with http.post(
                        f"{url}/v1/chat/completions", json={**CHAT, "stream": True}
                    ) as streaming:
                        await streaming.content.readuntil(b"\n\n")
                        assert regional.active == 1
                        streaming.close()  # hang up mid-stream
                await eventually(lambda: regional.active == 0, "the cut stream's place back")
                answer = await post(http, f"{url}/v1/chat/completions", CHAT)
                assert answer.status == 200, answer.body
        finally:
            gc.enable()

    @pytest.mark.parametrize("client", ["h1", "aiohttp"])
    async def test_r2_busy_connections_are_not_a_dead_upstream(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        client: str,
    ) -> None:
        """Every connection carries a long stream (max_connections 1, max_pending 1): health
        checks still reach the upstream (it stays live, not marked down), and a request
        queued behind the stream until its try ends is our 503 upstream_overflow, never an
        upstream timeout blamed on the endpoint."""
        _, fake_url = await start_fake(stack, "slow", stream_chunks=12, stream_delay_s=0.1)
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster(
                "regional",
                "regional",
                fake_url,
                max_connections=1,
                max_pending=1,
                request_timeout_ms=400,
                health_check={"enabled": True, "unhealthy_threshold": 2},
                client=client,
            ),
        )
        regional = clusters_of(app)["regional"]
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(LIMIT_S):
            async with http.post(
                f"{url}/v1/chat/completions", json={**CHAT, "stream": True}
            ) as streaming:
                await streaming.content.readuntil(b"\n\n")
                queued = await post(http, f"{url}/v1/chat/completions", CHAT)
                assert queued.status == 503, queued.body
                assert queued.code == "upstream_overflow"
                await asyncio.sleep(0.5)  # more health-check rounds, the stream still on
                assert len(regional.live(loop.time())) == 1
                await streaming.read()
        assert regional.counters.failures == 0
        assert regional.counters.overflows == 1
        assert (await post(http, f"{url}/v1/chat/completions", CHAT)).status == 200

    async def test_r3_twice_the_capacity_is_shed(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """Eight clients in a loop against a cap of four for ~3 s: every answer is a 200 or a
        503 upstream_overflow with Retry-After, the shed requests never reached the upstream,
        and the router serves normally afterwards."""
        slow, slow_url = await start_fake(stack, "slow", delay_s=0.1)
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", slow_url, max_connections=2, max_pending=2),
        )
        regional = clusters_of(app)["regional"]
        answers: list[Answer] = []
        stop_at = time.monotonic() + 3.0

        async def client() -> None:
            while time.monotonic() < stop_at:
                answers.append(await post(http, f"{url}/v1/chat/completions", CHAT))

        async with asyncio.timeout(30):
            await asyncio.gather(*(client() for _ in range(8)))
        served = [a for a in answers if a.status == 200]
        shed = [a for a in answers if a.status != 200]
        assert served
        assert shed
        for answer in shed:
            assert answer.status == 503
            assert answer.code == "upstream_overflow"
            assert "Retry-After" in answer.headers
        assert regional.counters.overflows == len(shed)
        assert regional.counters.requests == len(served) == len(slow.received)
        assert regional.counters.failures == 0
        assert regional.active == 0
        assert (await post(http, f"{url}/v1/chat/completions", CHAT)).status == 200


# -- R4: the retry budget ------------------------------------------------------------------


class TestRetryBudget:
    async def test_r4_retries_bounded_when_everything_fails(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """N requests at once against an upstream failing 100%: retries in each wave stay
        within the budget (20% of active, at least 3), far from one retry per request."""
        n = 20
        down, down_url = await start_fake(stack, "down", fail_status=503, delay_s=0.2)
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster(
                "regional",
                "regional",
                down_url,
                outlier={"consecutive_failures": 1000},  # keep ejection out of this
                retry={"max_attempts": 3, "budget_percent": 20, "min_concurrency": 3},
            ),
        )
        regional = clusters_of(app)["regional"]
        answers = await asyncio.gather(
            *(post(http, f"{url}/v1/embeddings", EMBED) for _ in range(n))
        )
        assert {a.status for a in answers} == {503}
        retries = len(down.received) - n
        assert retries == regional.counters.retries
        per_wave = max(3, math.ceil(n * 20 / 100))
        assert 1 <= retries <= 2 * per_wave
        assert regional.counters.retries_denied >= n - per_wave
        assert regional.retries_active == 0

    async def test_r4_non_idempotent_only_retried_with_a_key(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """A chat completion is sent once when it fails; with an Idempotency-Key it is
        retried up to max_attempts."""
        down, down_url = await start_fake(stack, "down", fail_status=503)
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", down_url, outlier={"consecutive_failures": 1000}),
        )
        for _ in range(5):
            answer = await post(http, f"{url}/v1/chat/completions", CHAT)
            assert answer.status == 503
            assert "retried" not in answer.reason
        assert len(down.received) == 5
        assert clusters_of(app)["regional"].counters.retries == 0
        answer = await post(
            http, f"{url}/v1/chat/completions", CHAT, headers={"Idempotency-Key": "k-1"}
        )
        assert answer.status == 503
        assert len(down.received) == 5 + 3
        assert [r.headers.get("Idempotency-Key") for r in down.received[5:]] == ["k-1"] * 3

    async def test_r4_an_empty_idempotency_key_is_no_key(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """A chat completion with an empty (or blank) Idempotency-Key is sent once, as one
        with none: the client named no key under which a repeat is safe."""
        down, down_url = await start_fake(stack, "down", fail_status=503)
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", down_url, outlier={"consecutive_failures": 1000}),
        )
        for key in ("", "  "):
            headers = {"Idempotency-Key": key}
            answer = await post(http, f"{url}/v1/chat/completions", CHAT, headers=headers)
            assert answer.status == 503
        assert len(down.received) == 2
        assert clusters_of(app)["regional"].counters.retries == 0

    async def test_r4_large_bodies_are_not_replayed(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """An idempotent request whose body is over retry.max_body_bytes is sent once."""
        down, down_url = await start_fake(stack, "down", fail_status=503)
        _, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster(
                "regional",
                "regional",
                down_url,
                outlier={"consecutive_failures": 1000},
                retry={"max_body_bytes": 1024},
            ),
        )
        small = await post(http, f"{url}/v1/embeddings", EMBED)
        assert small.status == 503
        assert len(down.received) == 3
        big = await post(http, f"{url}/v1/embeddings", {"model": MODEL, "input": ["x" * 4096]})
        assert big.status == 503
        assert len(down.received) == 3 + 1


# -- R5, R6: failures after the first byte -------------------------------------------------


def openai_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0, timeout=LIMIT_S)


async def drain_stream(client: openai.AsyncOpenAI, **extra: Any) -> list[Any]:
    async with asyncio.timeout(LIMIT_S):
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            **extra,
        )
        return [chunk async for chunk in stream]


class TestBrokenMidResponse:
    # Events in the fake's answer: role, 3 content pieces, finish, usage.
    @pytest.mark.parametrize("after", [1, 2, 3, 4, 5])
    async def test_r5_sse_break_is_an_explicit_error(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        after: int,
    ) -> None:
        """The upstream drops the connection after `after` events: the openai SDK raises
        APIError (never a stream that ends as if complete), and the request, although it
        carries an Idempotency-Key, is not retried once bytes went downstream."""
        fake, fake_url = await start_fake(stack, "regional", break_stream_after=after)
        app, url = await router_in_front_of(
            stack, tmp_path, cluster("regional", "regional", fake_url)
        )
        client = openai_client(url)
        with pytest.raises(openai.APIError):
            await drain_stream(
                client,
                stream_options={"include_usage": True},
                extra_headers={"Idempotency-Key": f"k-{after}"},
            )
        await client.close()
        assert len(fake.received) == 1
        assert clusters_of(app)["regional"].counters.retries == 0

        raw = await post(
            http,
            f"{url}/v1/chat/completions",
            {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
            headers={"Idempotency-Key": f"k2-{after}"},
        )
        assert raw.status == 200
        events = sse_events(raw.body)
        assert b"[DONE]" not in events
        assert orjson.loads(events[-1])["error"]["code"] == "upstream_stream_broken"
        assert len(events) == after + 1
        assert len(fake.received) == 2

    async def test_r5_stalled_stream_ends_with_an_error(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """An upstream that goes silent mid-stream for longer than request_timeout_ms: the
        stream ends with an explicit upstream_timeout error event instead of holding the
        client (and the cluster's place) for as long as the upstream stays silent."""
        fake, fake_url = await start_fake(stack, "regional", stream_delay_s=3.0)
        app, url = await router_in_front_of(
            stack, tmp_path, cluster("regional", "regional", fake_url, request_timeout_ms=300)
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        raw = await post(http, f"{url}/v1/chat/completions", {**CHAT, "stream": True})
        assert loop.time() - started < 2.0
        assert raw.status == 200
        events = sse_events(raw.body)
        assert len(events) == 2  # the first event, then the error
        assert orjson.loads(events[-1])["error"]["code"] == "upstream_stream_broken"
        assert "no byte for 300 ms" in orjson.loads(events[-1])["error"]["message"]
        await eventually(lambda: clusters_of(app)["regional"].active == 0, "place given back")
        assert len(fake.received) == 1

    async def test_an_event_that_never_ends_is_cut_with_an_error(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """An upstream whose stream sends one event without end (no empty line, 16 MiB of
        it): the router holds at most one event's worth (the cap set to 1 MiB here), ends
        the stream with upstream_stream_broken and stops reading, instead of piling the
        endless event up in memory."""
        monkeypatch.setattr(forwarding, "MAX_EVENT_BYTES", 1 << 20)
        sent = 0

        async def endless(request: web.Request) -> web.StreamResponse:
            nonlocal sent
            await request.read()
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"choices": []}\n\ndata: "')
            with contextlib.suppress(ConnectionError):
                while sent < 16 << 20:
                    await response.write(b"x" * 65536)
                    sent += 65536
            return response

        upstream = web.Application()
        upstream.router.add_post("/v1/chat/completions", endless)
        upstream_url = await stack.enter_async_context(serving(upstream))
        _, url = await router_in_front_of(
            stack, tmp_path, cluster("regional", "regional", upstream_url)
        )
        raw = await post(http, f"{url}/v1/chat/completions", {**CHAT, "stream": True})
        assert raw.status == 200
        events = sse_events(raw.body)
        assert events[0] == b'{"choices": []}'
        assert orjson.loads(events[-1])["error"]["code"] == "upstream_stream_broken"
        assert len(raw.body) < 2 << 20
        assert sent < 16 << 20

    @pytest.mark.parametrize("after_done", ["silence", "reset"])
    async def test_r5_a_stream_complete_at_done_is_not_broken_after_it(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        after_done: str,
    ) -> None:
        """An upstream that sent `data: [DONE]` and then stays silent past request_timeout_ms,
        or drops its connection, gave the whole answer: the client gets it as it was, no
        error event after its [DONE], and the audit record names no stream_error."""

        async def chat(request: web.Request) -> web.StreamResponse:
            await request.read()
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"choices": []}\n\ndata: [DONE]\n\n')
            if after_done == "reset":
                assert request.transport is not None
                request.transport.abort()
            else:
                with contextlib.suppress(ConnectionError):
                    await asyncio.sleep(1.0)  # past the router's 300 ms: then it ends
                    await response.write_eof()
            return response

        upstream = web.Application()
        upstream.router.add_post("/v1/chat/completions", chat)
        upstream_url = await stack.enter_async_context(serving(upstream))
        audit = tmp_path / "audit"
        settings = Settings.model_validate(
            {
                "models": {"repository": str(tmp_path), "inference_threads": 1},
                "upstreams": [
                    cluster("regional", "regional", upstream_url, request_timeout_ms=300)
                ],
                "audit": {"path": audit, "fsync": "never"},
            }
        )
        url = await stack.enter_async_context(serving(build_app(settings)))
        raw = await post(http, f"{url}/v1/chat/completions", {**CHAT, "stream": True})
        assert raw.status == 200
        assert sse_events(raw.body) == [b'{"choices": []}', b"[DONE]"]
        (log,) = audit.glob("*.jsonl")
        (record,) = map(orjson.loads, log.read_bytes().split())
        assert (record["status"], record["reasons"]) == (200, ["forward:regional"])

    async def test_r5_break_before_the_first_event(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path
    ) -> None:
        """Dropped before any event: the client still gets an error, never an empty stream
        that looks complete."""
        fake, fake_url = await start_fake(stack, "regional", break_stream_after=0)
        _, url = await router_in_front_of(
            stack, tmp_path, cluster("regional", "regional", fake_url)
        )
        client = openai_client(url)
        with pytest.raises(openai.APIError):
            await drain_stream(client)
        await client.close()
        assert len(fake.received) == 1

    async def test_r5_reset_mid_body_is_never_a_truncated_200(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """A non-streamed answer cut mid-body is an error, not a truncated 200: 502
        upstream_reset when nothing else serves the model (the idempotent request retried
        while nothing had gone downstream), a complete 200 from the fallback tier otherwise."""
        broken, broken_url = await start_fake(stack, "broken", reset_mid_body=True)
        _, url = await router_in_front_of(
            stack, tmp_path, cluster("regional", "regional", broken_url)
        )
        answer = await post(http, f"{url}/v1/embeddings", EMBED)
        assert answer.status == 502
        assert answer.code == "upstream_reset"
        assert b"partial" not in answer.body
        assert len(broken.received) == 3
        chat = await post(http, f"{url}/v1/chat/completions", CHAT)
        assert chat.status == 502
        assert len(broken.received) == 4

    async def test_r5_reset_mid_body_falls_back(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """With a central tier, the cut answer is replaced by central's complete one."""
        broken, broken_url = await start_fake(stack, "broken", reset_mid_body=True)
        _, central_url = await start_fake(stack, "central")
        _, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", broken_url, retry={"max_attempts": 1}),
            cluster("central", "central", central_url),
        )
        answer = await post(http, f"{url}/v1/chat/completions", CHAT)
        assert answer.status == 200
        assert answer.json()["choices"][0]["message"]["content"] == "central heard: hello"
        assert answer.reason == "failed:regional:upstream_reset,fallback:central"
        assert answer.tier == "central"
        assert len(broken.received) == 1

    async def test_r6_killed_mid_stream_at_random_offsets(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """50 streams cut at random points (a random byte offset through FaultProxy, or a
        random event by the upstream): no client hangs, each outcome is a complete stream or
        an explicit error, and the next request on the pool succeeds."""
        rng = random.Random(20240607)
        text = "".join(rng.choice("abcdefghij ") for _ in range(300))

        def close_when_asked(app: web.Application) -> None:
            # Lets the check request leave the router's pool empty, so each trial's request
            # opens a new connection that gets the trial's fault.
            async def close(request: web.Request, response: web.StreamResponse) -> None:
                if "X-Test-Close" in request.headers:
                    response.force_close()

            app.on_response_prepare.append(close)

        fake, fake_url = await start_fake(
            stack, "regional", app_hook=close_when_asked, reply_text=text, stream_chunks=12
        )
        port = int(fake_url.rsplit(":", 1)[1])
        proxy = await stack.enter_async_context(FaultProxy("127.0.0.1", port))
        app, url = await router_in_front_of(
            stack, tmp_path, cluster("regional", "regional", proxy.url, request_timeout_ms=5000)
        )
        body = {**CHAT, "stream": True}
        length = await _response_length(port, body)

        for trial in range(50):
            by_proxy = trial % 2 == 0
            if by_proxy:
                proxy.faults.limit_bytes = rng.randrange(1, length)
            else:
                fake.behaviour.break_stream_after = rng.randrange(0, 5)
            answer = await post(http, f"{url}/v1/chat/completions", body)
            _assert_complete_or_explicit(answer, text, f"trial {trial}")
            proxy.faults.limit_bytes = None
            fake.behaviour.break_stream_after = None
            check = await post(
                http, f"{url}/v1/chat/completions", body, headers={"X-Test-Close": "1"}
            )
            assert check.status == 200, f"trial {trial}: {check.body!r}"
            assert _streamed_text(check) == text, f"trial {trial}"
        assert clusters_of(app)["regional"].active == 0


async def _response_length(port: int, doc: dict[str, Any]) -> int:
    """Bytes of the fake's whole HTTP response to `doc` (headers and chunked body)."""
    payload = orjson.dumps(doc)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        data = b""
        async with asyncio.timeout(LIMIT_S):
            while not data.endswith(b"\r\n0\r\n\r\n"):
                chunk = await reader.read(65536)
                assert chunk, "the fake closed before finishing its answer"
                data += chunk
        return len(data)
    finally:
        writer.close()


def _streamed_text(answer: Answer) -> str:
    parts = []
    for event in sse_events(answer.body):
        if event == b"[DONE]":
            break
        doc = orjson.loads(event)
        for choice in doc.get("choices", []):
            parts.append(choice["delta"].get("content", ""))
    return "".join(parts)


def _assert_complete_or_explicit(answer: Answer, text: str, where: str) -> None:
    if answer.status != 200:
        assert answer.status in (502, 504), where
        assert answer.json()["error"]["code"].startswith("upstream_"), where
        return
    events = sse_events(answer.body)
    if b"[DONE]" in events:
        assert _streamed_text(answer) == text, f"{where}: [DONE] after an incomplete text"
        return
    assert events, f"{where}: an empty 200 stream"
    last = orjson.loads(events[-1])
    assert last.get("error", {}).get("code") == "upstream_stream_broken", where


# -- R7 and fallback: budgets and dead tiers -----------------------------------------------


class TestBudgetAndFallback:
    async def test_r7_slow_regional_is_learned_and_skipped(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """Regional takes 1.5 s, central is fast, the client gives 300 ms: the first request
        ends within the budget (plus slack) with a reason, served by central or failed fast;
        then regional's observed latency makes later requests skip it for central."""
        slow, slow_url = await start_fake(stack, "regional", delay_s=1.5)
        _, central_url = await start_fake(stack, "central")
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", slow_url, expected_latency_ms=50),
            cluster("central", "central", central_url, expected_latency_ms=20),
        )
        budget = {"X-Latency-Budget-Ms": "300"}
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = await post(http, f"{url}/v1/chat/completions", CHAT, headers=budget)
        assert loop.time() - started < 0.3 + 0.7
        assert "failed:regional:upstream_timeout" in first.reason
        if first.status == 200:
            assert first.tier == "central"
        else:
            assert first.status == 504
        assert len(slow.received) == 1
        assert clusters_of(app)["central"].counters.failures == 0

        for _ in range(3):
            answer = await post(http, f"{url}/v1/chat/completions", CHAT, headers=budget)
            assert answer.status == 200, answer.body
            assert answer.reason == "over_budget:regional,forward:central"
            assert answer.tier == "central"
        assert len(slow.received) == 1

    async def test_r7_slow_first_event_counts_against_the_budget(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """Regional sends its stream's headers at once but its first event only after 1.5 s:
        with a 300 ms budget the try times out at the budget (then central or a 504), never
        a 200 from regional that keeps the client waiting past it; the wait is learned."""
        slow, slow_url = await start_fake(stack, "regional", first_event_delay_s=1.5)
        _, central_url = await start_fake(stack, "central", reply_text="fast")
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", slow_url, expected_latency_ms=20),
            cluster("central", "central", central_url, expected_latency_ms=20),
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await post(
            http,
            f"{url}/v1/chat/completions",
            {**CHAT, "stream": True},
            headers={"X-Latency-Budget-Ms": "300"},
        )
        assert loop.time() - started < 1.0
        assert "failed:regional:upstream_timeout" in answer.reason
        if answer.status == 200:
            assert answer.tier == "central"
            assert b"fast" in answer.body
        else:
            assert answer.status == 504, answer.body
        assert len(slow.received) == 1
        # The wait for the first event is latency regional showed, remembered for routing.
        assert (clusters_of(app)["regional"].endpoints[0].health.ewma_ms or 0) >= 250

    async def test_r7_a_tier_learnt_fast_then_slow_is_skipped_soon(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """Central answered fast, then takes a second: with a 300 ms budget the first tries
        time out at the budget, and within a few the tier is skipped (504 budget_unmeetable
        at once, nothing sent) instead of every request waiting out its budget."""
        central, central_url = await start_fake(stack, "central")
        _, url = await router_in_front_of(
            stack, tmp_path, cluster("central", "central", central_url, expected_latency_ms=20)
        )
        for _ in range(5):  # learnt fast
            assert (await post(http, f"{url}/v1/chat/completions", CHAT)).status == 200
        central.behaviour.delay_s = 1.0
        budget = {"X-Latency-Budget-Ms": "300"}
        answers = [
            await post(http, f"{url}/v1/chat/completions", CHAT, headers=budget) for _ in range(8)
        ]
        assert all(a.status == 504 for a in answers)
        codes = [a.code for a in answers]
        assert "upstream_timeout" in codes
        assert codes[-3:] == ["budget_unmeetable"] * 3
        assert len(central.received) - 5 <= 5  # the rest never left the site

    async def test_r7_budget_nobody_can_meet_fails_fast(
        self, stack: contextlib.AsyncExitStack, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """Every tier expects more than the budget: 504 budget_unmeetable at once, naming
        both tiers, with nothing sent upstream."""
        regional, regional_url = await start_fake(stack, "regional")
        central, central_url = await start_fake(stack, "central")
        _, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster("regional", "regional", regional_url, expected_latency_ms=200),
            cluster("central", "central", central_url, expected_latency_ms=400),
        )
        answer = await post(
            http, f"{url}/v1/chat/completions", CHAT, headers={"X-Latency-Budget-Ms": "100"}
        )
        assert answer.status == 504
        assert answer.code == "budget_unmeetable"
        assert answer.reason == "over_budget:regional,over_budget:central"
        assert regional.received == []
        assert central.received == []

    @pytest.mark.parametrize(
        ("fault", "code"),
        [
            ("blackhole", "upstream_timeout"),
            ("refused", "upstream_connect_failed"),
            ("reset", "upstream_reset"),
        ],
    )
    async def test_dead_tier_falls_back_then_is_checked_down_and_back(
        self,
        stack: contextlib.AsyncExitStack,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        fault: str,
        code: str,
    ) -> None:
        """A regional tier that is blackholed, refuses connections or resets them: the request
        falls back to central with `failed:regional:CODE`; active health checks then mark
        regional down (skipped as unhealthy) and, once the fault is gone, up again."""
        regional_fake, regional_url = await start_fake(stack, "regional")
        _, central_url = await start_fake(stack, "central")
        port = int(regional_url.rsplit(":", 1)[1])
        proxy = await stack.enter_async_context(FaultProxy("127.0.0.1", port))
        if fault == "refused":
            endpoint = f"http://127.0.0.1:{closed_port()}"
        else:
            setattr(proxy.faults, fault, True)
            endpoint = proxy.url
        app, url = await router_in_front_of(
            stack,
            tmp_path,
            cluster(
                "regional",
                "regional",
                endpoint,
                request_timeout_ms=300,
                health_check={
                    "enabled": True,
                    "interval_s": 0.1,
                    "timeout_s": 0.2,
                    "unhealthy_threshold": 3,
                    "healthy_threshold": 2,
                },
            ),
            cluster("central", "central", central_url),
        )
        health = clusters_of(app)["regional"].endpoints[0].health
        first = await post(http, f"{url}/v1/chat/completions", CHAT)
        assert first.status == 200
        assert first.tier == "central"
        assert first.reason in (
            f"failed:regional:{code},fallback:central",
            "unhealthy:regional,forward:central",  # the checks were quicker than us
        )

        await eventually(lambda: not health.checked_healthy, "regional checked down")
        answer = await post(http, f"{url}/v1/chat/completions", CHAT)
        assert answer.status == 200
        assert answer.reason == "unhealthy:regional,forward:central"

        if fault == "refused":
            return  # nothing will ever listen there
        setattr(proxy.faults, fault, False)
        await eventually(lambda: health.checked_healthy, "regional checked up again")
        answer = await post(http, f"{url}/v1/chat/completions", CHAT)
        assert answer.status == 200
        assert answer.tier == "regional"
        assert answer.reason == "forward:regional"
        assert len(regional_fake.received) == 1
