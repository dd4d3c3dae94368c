"""The OpenAI-compatible face through the real `openai` SDK (sync and asyncio), with fake
OpenAI upstreams on loopback: answers arrive intact, streams are relayed as they come, errors
have OpenAI's shape and map onto the SDK's exception classes."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import orjson
import pytest
from aiohttp import web

from router.api.state import UPSTREAMS
from router.app import build_app
from router.settings import Settings
from router.testing import (
    AppThread,
    Behaviour,
    FakeUpstream,
    RouterThread,
    central_chat_cluster,
    chat_forwarding_settings,
    serving,
)

TIMEOUT_S = 30.0
STREAM_DELAY_S = 0.3  # between the slow upstream's SSE events
MESSAGES: list[Any] = [{"role": "user", "content": "what colour is the sky"}]


@dataclass
class TextCompletions(FakeUpstream):
    """A fake that answers /v1/completions in the text-completion shape the SDK parses."""

    def _completion(self, doc: dict[str, Any]) -> dict[str, Any]:
        if "prompt" not in doc:
            return super()._completion(doc)
        choice = {"index": 0, "text": self._text(doc), "logprobs": None, "finish_reason": "stop"}
        return {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": 0,
            "model": doc.get("model", ""),
            "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }


@dataclass
class WatchedStreams(FakeUpstream):
    """A fake that remembers how each SSE answer ended: completed, or cut by its client."""

    endings: list[str] = field(default_factory=list)

    async def _stream(self, request: web.Request, doc: dict[str, Any]) -> web.StreamResponse:
        try:
            response = await super()._stream(request, doc)
        except BaseException as exc:  # cancelled or reset: the router hung up on us
            self.endings.append(type(exc).__name__)
            raise
        self.endings.append("complete")
        return response


@dataclass
class Site:
    router: RouterThread
    llm: TextCompletions
    slow: WatchedStreams
    endless: WatchedStreams
    broken: FakeUpstream
    llm_url: str


def closed_port() -> int:
    """A loopback port that nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cluster(name: str, tier: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "tier": tier,
        "protocols": ["openai"],
        "endpoints": [{"url": url}],
        "connect_timeout_ms": 2_000,
        "health_check": {"interval_s": 0.2, "timeout_s": 2.0},
        "retry": {"base_backoff_ms": 5, "max_backoff_ms": 20},
        **extra,
    }


@pytest.fixture(scope="module")
def site(edge_models: Path) -> Iterator[Site]:
    """An edge router serving the demo models, with four OpenAI upstreams and a dead one."""
    llm = TextCompletions(name="llm", models=("gpt-test", "text-embed"))
    slow = WatchedStreams(
        name="slow", models=("gpt-slow",), behaviour=Behaviour(stream_delay_s=STREAM_DELAY_S)
    )
    endless = WatchedStreams(
        name="endless",
        models=("gpt-endless",),
        behaviour=Behaviour(stream_chunks=100, stream_delay_s=0.2),
    )
    broken = FakeUpstream(name="broken", models=("gpt-broken",))
    threads = [AppThread(fake.app) for fake in (llm, slow, endless, broken)]
    for thread in threads:
        thread.start()
    try:
        settings = Settings.model_validate(
            {
                "site": {"id": "edge-openai", "tier": "edge"},
                "models": {"repository": edge_models, "inference_threads": 1},
                "upstreams": [
                    cluster("llm", "regional", threads[0].url),
                    cluster("slow", "central", threads[1].url),
                    cluster("endless", "central", threads[2].url),
                    cluster("broken", "regional", threads[3].url),
                    cluster(
                        "gone",
                        "central",
                        f"http://127.0.0.1:{closed_port()}",
                        models=["gpt-gone"],
                        health_check={"enabled": False},
                    ),
                ],
            }
        )
        with RouterThread(settings) as router:
            yield Site(router, llm, slow, endless, broken, threads[0].url)
    finally:
        for thread in threads:
            thread.stop()


@pytest.fixture
def client(site: Site) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=site.router.url + "/v1", api_key="sk-test", max_retries=0, timeout=TIMEOUT_S
    ) as sdk:
        yield sdk


@pytest.fixture
async def aclient(site: Site) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=site.router.url + "/v1", api_key="sk-test", max_retries=0, timeout=TIMEOUT_S
    ) as sdk:
        yield sdk


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
        yield session


def wait_for(predicate: Any, timeout_s: float = 10.0) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passes (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


class TestAnswers:
    """Non-streamed answers through the sync SDK."""

    def test_chat_completion(self, client: openai.OpenAI, site: Site) -> None:
        """A chat completion comes back as the upstream wrote it, with our trace headers."""
        raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
        completion = raw.parse()
        assert completion.choices[0].message.content == "llm heard: what colour is the sky"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None
        assert completion.usage.total_tokens == 2
        assert raw.headers["X-Served-By-Tier"] == "regional"
        assert raw.headers["X-Route-Reason"] == "forward:llm"
        assert raw.headers["X-Request-Id"]
        assert "upstream;dur=" in raw.headers["Server-Timing"]
        sent = orjson.loads(site.llm.requests_to("/v1/chat/completions")[-1].body)
        assert sent["messages"] == MESSAGES

    async def test_null_stream_means_no_stream(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """`"stream": null` is valid OpenAI (the field is nullable, default false): a plain
        answer, not a 400."""
        body = {"model": "gpt-test", "messages": MESSAGES, "stream": None}
        url = f"{site.router.url}/v1/chat/completions"
        async with http.post(url, json=body) as response:
            assert response.status == 200, await response.text()
            assert response.content_type == "application/json"
            doc = await response.json()
        assert doc["object"] == "chat.completion"

    def test_completion(self, client: openai.OpenAI) -> None:
        """Legacy text completions are relayed too."""
        completion = client.completions.create(model="gpt-test", prompt="once upon a time")
        assert completion.choices[0].text == "llm heard: once upon a time"
        assert completion.object == "text_completion"

    def test_embeddings(self, client: openai.OpenAI, site: Site) -> None:
        """Embeddings for each input arrive in order."""
        result = client.embeddings.create(
            model="text-embed", input=["a", "bcd"], encoding_format="float"
        )
        assert [item.embedding for item in result.data] == [[1.0, 0.5], [3.0, 0.5]]
        assert [item.index for item in result.data] == [0, 1]
        assert site.llm.requests_to("/v1/embeddings")

    def test_models_list_shows_every_tier(self, client: openai.OpenAI) -> None:
        """`models.list()` lists local models and each upstream's, with the tier serving it."""
        tiers = {m.id: (m.model_extra or {}).get("tier") for m in client.models.list()}
        assert tiers["color_classifier"] == "edge"
        assert tiers["hotspot_detector"] == "edge"
        assert tiers["gpt-test"] == "regional"
        assert tiers["text-embed"] == "regional"
        assert tiers["gpt-slow"] == "central"
        assert tiers["gpt-gone"] == "central"

    def test_model_retrieved(self, client: openai.OpenAI) -> None:
        """`models.retrieve()` (GET /v1/models/{id}) answers one entry of the list, ids with
        a slash included; an unknown id is OpenAI's 404 model_not_found."""
        model = client.models.retrieve("gpt-test")
        assert model.id == "gpt-test"
        assert (model.model_extra or {}).get("tier") == "regional"
        assert client.models.retrieve("color_classifier").id == "color_classifier"
        with pytest.raises(openai.NotFoundError) as info:
            client.models.retrieve("org/no-such-model")
        assert info.value.code == "model_not_found"

    async def test_async_sdk(self, aclient: openai.AsyncOpenAI) -> None:
        """The asyncio SDK gets the same answers, concurrently."""
        chats = [
            aclient.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": f"question {i}"}]
            )
            for i in range(5)
        ]
        answers = await asyncio.gather(*chats)
        assert [a.choices[0].message.content for a in answers] == [
            f"llm heard: question {i}" for i in range(5)
        ]
        result = await aclient.embeddings.create(model="text-embed", input="xy")
        assert result.data[0].embedding == [2.0, 0.5]


class TestStreaming:
    """SSE streams through the router."""

    def test_stream_with_usage(self, client: openai.OpenAI) -> None:
        """Chunks arrive in order, their content equals the upstream's, the usage chunk last."""
        stream = client.chat.completions.create(
            model="gpt-test",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "llm heard: what colour is the sky"
        assert chunks[-2].choices[0].finish_reason == "stop"
        usage_chunk = chunks[-1]
        assert usage_chunk.choices == []
        assert usage_chunk.usage is not None
        assert usage_chunk.usage.completion_tokens == 3
        assert usage_chunk.usage.total_tokens == 4
        assert all(c.usage is None for c in chunks[:-1])

    async def test_stream_bytes_identical_to_upstream(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """The SSE body through the router is byte for byte what the upstream sent."""
        body = {
            "model": "gpt-test",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with http.post(site.router.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            assert resp.headers["X-Served-By-Tier"] == "regional"
            relayed = await resp.read()
        async with http.post(site.llm_url + "/v1/chat/completions", json=body) as resp:
            direct = await resp.read()
        assert relayed == direct
        assert relayed.endswith(b"data: [DONE]\n\n")

    async def test_async_stream(self, aclient: openai.AsyncOpenAI) -> None:
        """The asyncio SDK streams the same content."""
        stream = await aclient.chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "llm heard: what colour is the sky"
        assert chunks[-1].usage is not None

    def test_stream_not_buffered(self, client: openai.OpenAI, site: Site) -> None:
        """With the upstream pausing between events, the first chunk reaches the client long
        before the stream ends, and the chunks arrive spread out as they were sent."""
        before = len(site.slow.endings)
        started = time.monotonic()
        arrivals: list[float] = []
        with client.chat.completions.create(
            model="gpt-slow", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        ) as stream:
            for _ in stream:
                arrivals.append(time.monotonic() - started)
        total = time.monotonic() - started
        events = 6  # role, three content pieces, finish, usage
        assert len(arrivals) == events
        # The upstream sleeps STREAM_DELAY_S after each event; a buffering proxy would deliver
        # every chunk at the very end.
        assert total >= events * STREAM_DELAY_S * 0.9
        assert arrivals[0] < total / 3
        assert arrivals[-1] - arrivals[0] > total / 2
        # The upstream notes its ending after its last bytes, which may reach us first.
        assert wait_for(lambda: len(site.slow.endings) > before)
        assert site.slow.endings[before] == "complete"

    def test_client_disconnect_cancels_upstream(self, client: openai.OpenAI, site: Site) -> None:
        """A client that hangs up mid-stream makes the router drop the upstream request."""
        before = len(site.endless.endings)
        stream = client.chat.completions.create(model="gpt-endless", messages=MESSAGES, stream=True)
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
        stream.close()
        # The upstream's answer would take 100 x 0.2 s; it must end early and not complete.
        assert wait_for(lambda: len(site.endless.endings) > before)
        assert site.endless.endings[before] != "complete"
        app = site.router.app
        assert app is not None
        assert wait_for(
            lambda: site.router.call(lambda: app[UPSTREAMS].clusters["endless"].active) == 0
        )


class TestErrors:
    """Failures in OpenAI's error shape, raised by the SDK as the matching exception."""

    def test_bad_json(self, client: openai.OpenAI) -> None:
        """A body that is not JSON is a 400 BadRequestError naming the problem."""
        with pytest.raises(openai.BadRequestError) as info:
            client.post(
                "/chat/completions",
                cast_to=object,
                content=b'{"model": "gpt-test", "messages": [',
                options={"headers": {"Content-Type": "application/json"}},
            )
        assert info.value.status_code == 400
        assert info.value.code == "malformed_body"
        assert "not valid JSON" in info.value.message
        assert error_object(info.value)["type"] == "invalid_request_error"

    def test_missing_model(self, client: openai.OpenAI) -> None:
        """A request without a model is a 400 saying so."""
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="", messages=MESSAGES)
        assert info.value.code == "bad_request"
        assert "'model'" in info.value.message
        assert info.value.param == "model"  # OpenAI's error object names the field at fault

    def test_bad_stream_names_its_param(self, client: openai.OpenAI) -> None:
        """A non-boolean `stream` is a 400 whose `param` is "stream"."""
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model="gpt-test", messages=MESSAGES, extra_body={"stream": "yes"}
            )
        assert info.value.param == "stream"

    def test_unknown_model(self, client: openai.OpenAI) -> None:
        """A model nobody serves is a 404 NotFoundError with code model_not_found."""
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model="no-such-model", messages=MESSAGES)
        assert info.value.code == "model_not_found"
        assert "no-such-model" in info.value.message
        assert error_object(info.value) == {
            "message": "unknown model 'no-such-model'",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }

    def test_local_kserve_model_is_not_an_openai_model(self, client: openai.OpenAI) -> None:
        """A local v2 model (which /v1/models lists) cannot be reached on the OpenAI face: the
        404 says which API serves it, instead of that it does not exist."""
        assert "color_classifier" in {m.id for m in client.models.list()}
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model="color_classifier", messages=MESSAGES)
        assert info.value.code == "model_not_found"
        assert error_object(info.value)["message"] == (
            "model 'color_classifier' is served here over the KServe v2 API only: "
            "POST /v2/models/color_classifier/infer"
        )

    def test_upstream_down(self, client: openai.OpenAI) -> None:
        """An upstream that refuses connections is a 502 InternalServerError."""
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="gpt-gone", messages=MESSAGES)
        assert info.value.status_code == 502
        assert info.value.code == "upstream_connect_failed"
        assert "connection failed" in info.value.message
        assert error_object(info.value)["type"] == "server_error"
        assert (
            info.value.response.headers["X-Route-Reason"] == "failed:gone:upstream_connect_failed"
        )

    @pytest.mark.parametrize(("upstream", "ours"), [(500, 502), (503, 503)])
    def test_upstream_5xx(
        self, client: openai.OpenAI, site: Site, upstream: int, ours: int
    ) -> None:
        """An upstream 5xx is our 502 (503 stays 503), sent once: a chat is not replayed."""
        site.broken.behaviour.fail_status = upstream
        before = len(site.broken.received)
        try:
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="gpt-broken", messages=MESSAGES)
        finally:
            site.broken.behaviour.fail_status = 0
        assert info.value.status_code == ours
        assert info.value.code == "upstream_status"
        assert f"answered {upstream}" in info.value.message
        assert "failing on purpose" not in info.value.message  # the upstream's body stays there
        assert len(site.broken.received) == before + 1

    def test_upstream_rate_limit_is_a_rate_limit(self, client: openai.OpenAI, site: Site) -> None:
        """An upstream 429 reaches the SDK as a RateLimitError (429 with the upstream's
        Retry-After), which callers catch to slow down, not as a server error."""
        site.broken.behaviour.fail_status = 429
        site.broken.behaviour.retry_after = "7"
        try:
            with pytest.raises(openai.RateLimitError) as info:
                client.chat.completions.create(model="gpt-broken", messages=MESSAGES)
        finally:
            site.broken.behaviour.fail_status = 0
            site.broken.behaviour.retry_after = None
        assert info.value.status_code == 429
        assert info.value.code == "upstream_status"
        assert info.value.response.headers["Retry-After"] == "7"

    def test_upstream_retry_after_ms_is_passed_on(self, client: openai.OpenAI, site: Site) -> None:
        """An upstream 429's `retry-after-ms: 250` (what the SDK reads first) reaches the
        client as such, beside a Retry-After rounded up to whole seconds, instead of only that
        (the SDK would wait four times longer than asked)."""
        site.broken.behaviour.fail_status = 429
        site.broken.behaviour.fail_headers = {"retry-after-ms": "250"}
        try:
            with pytest.raises(openai.RateLimitError) as info:
                client.chat.completions.create(model="gpt-broken", messages=MESSAGES)
        finally:
            site.broken.behaviour.fail_status = 0
            site.broken.behaviour.fail_headers = {}
        headers = info.value.response.headers
        assert headers["retry-after-ms"] == "250"
        assert headers["Retry-After"] == "1"

    def test_unmeetable_budget_is_not_retried_by_the_sdk(self, site: Site) -> None:
        """A 504 for a budget no target can meet (decided up front, or spent before the
        upstream answered) says `x-should-retry: false`: the SDK, which retries every 5xx,
        gives up at once instead of backing off past the client's budget."""
        sent: list[httpx.Request] = []
        http = httpx.Client(event_hooks={"request": [sent.append]})
        site.broken.behaviour.delay_s = 1.0  # far beyond the budget below
        try:
            with (
                openai.OpenAI(
                    base_url=site.router.url + "/v1",
                    api_key="sk-test",
                    max_retries=2,
                    http_client=http,
                ) as sdk,
                pytest.raises(openai.InternalServerError) as info,
            ):
                sdk.chat.completions.create(
                    model="gpt-broken",
                    messages=MESSAGES,
                    extra_headers={"X-Latency-Budget-Ms": "100"},
                )
        finally:
            site.broken.behaviour.delay_s = 0.0
        assert info.value.status_code == 504
        assert info.value.response.headers["x-should-retry"] == "false"
        assert len(sent) == 1

    def test_upstream_saying_do_not_retry_is_heeded(self, site: Site) -> None:
        """An upstream 5xx with `x-should-retry: false` is passed on as such: neither we
        nor the SDK send the request again."""
        site.broken.behaviour.fail_status = 500
        site.broken.behaviour.fail_headers = {"x-should-retry": "false"}
        before = len(site.broken.received)
        try:
            with (
                openai.OpenAI(
                    base_url=site.router.url + "/v1", api_key="sk-test", max_retries=2
                ) as sdk,
                pytest.raises(openai.InternalServerError) as info,
            ):
                sdk.chat.completions.create(
                    model="gpt-broken",
                    messages=MESSAGES,
                    extra_headers={"Idempotency-Key": "once-only"},  # we may replay it
                )
        finally:
            site.broken.behaviour.fail_status = 0
            site.broken.behaviour.fail_headers = {}
        assert info.value.response.headers["x-should-retry"] == "false"
        assert len(site.broken.received) == before + 1

    def test_seed_with_a_cards_digits_is_refused_not_sent_as_text(
        self, client: openai.OpenAI, site: Site
    ) -> None:
        """A random 63-bit seed with a 19-digit Visa card's digits (one in thirty are) is a
        422 naming the field, never sent as `"seed": "<CARD_1>"` (which the upstream would
        refuse as a string); an ordinary seed goes on as the integer it is."""
        before = len(site.llm.received)
        with pytest.raises(openai.UnprocessableEntityError) as info:
            client.chat.completions.create(
                model="gpt-test", messages=MESSAGES, seed=4402799966178870243
            )
        assert info.value.code == "numeric_value_redaction"
        assert info.value.param == "seed"
        message = error_object(info.value)["message"]
        assert message.startswith("'seed' is a number holding a CARD value")
        assert "4402799966178870243" not in message
        assert info.value.response.headers["x-should-retry"] == "false"
        assert len(site.llm.received) == before
        client.chat.completions.create(model="gpt-test", messages=MESSAGES, seed=455236681536321531)
        sent = orjson.loads(site.llm.requests_to("/v1/chat/completions")[-1].body)
        assert sent["seed"] == 455236681536321531

    async def test_async_sdk_error(self, aclient: openai.AsyncOpenAI) -> None:
        """The asyncio SDK raises the same classes."""
        with pytest.raises(openai.NotFoundError) as info:
            await aclient.chat.completions.create(model="no-such-model", messages=MESSAGES)
        assert info.value.code == "model_not_found"


def error_object(error: openai.APIStatusError) -> dict[str, Any]:
    """The `error` object of an OpenAI error body, checked to be the whole body."""
    doc = orjson.loads(error.response.content)
    assert list(doc) == ["error"]
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    result: dict[str, Any] = doc["error"]
    return result


async def test_media_type_is_case_insensitive(http: aiohttp.ClientSession) -> None:
    """An upstream's `Text/Event-Stream; Charset=UTF-8` is a stream all the same (media types
    are case-insensitive, RFC 9110 §8.3.1): its first event reaches the client while the
    upstream still holds the rest back, instead of the whole answer being buffered."""
    release = asyncio.Event()

    async def held_stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "Text/Event-Stream; Charset=UTF-8"})
        await response.prepare(request)
        await response.write(b'data: {"first": true}\n\n')
        await release.wait()
        await response.write(b"data: [DONE]\n\n")
        return response

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", held_stream)
    async with serving(upstream) as upstream_url:
        router_app = build_app(chat_forwarding_settings(upstream_url))
        async with serving(router_app) as url, asyncio.timeout(TIMEOUT_S / 3):
            body = {"model": "gpt-test", "messages": MESSAGES, "stream": True}
            async with http.post(f"{url}/v1/chat/completions", json=body) as response:
                assert response.status == 200
                assert response.content_type == "text/event-stream"
                first = await response.content.readuntil(b"\n\n")
                assert first == b'data: {"first": true}\n\n'
                release.set()
                assert await response.read() == b"data: [DONE]\n\n"


def test_upstream_kserve_model_is_not_an_openai_model() -> None:
    """A model only a KServe v2 cluster serves, which /v1/models lists, asked for over the
    OpenAI API: the 404 says which API serves it, not that the listed model is unknown."""
    vision = FakeUpstream(name="vision", models=(), v2_models=("resnet",))
    with AppThread(vision.app) as upstream:
        settings = Settings.model_validate(
            {
                "upstreams": [
                    {
                        "name": "vision",
                        "tier": "regional",
                        "protocols": ["kserve-v2"],
                        "models": ["resnet"],
                        "endpoints": [{"url": upstream.url}],
                        "health_check": {"enabled": False},
                    }
                ],
                "cache": {"enabled": False},
            }
        )
        with (
            RouterThread(settings) as router,
            openai.OpenAI(
                base_url=router.url + "/v1", api_key="sk-test", max_retries=0, timeout=TIMEOUT_S
            ) as sdk,
        ):
            assert "resnet" in {m.id for m in sdk.models.list()}
            with pytest.raises(openai.NotFoundError) as info:
                sdk.chat.completions.create(model="resnet", messages=MESSAGES)
    assert info.value.code == "model_not_found"
    assert error_object(info.value)["message"] == (
        "model 'resnet' is served by this site's upstreams over the KServe v2 API only: "
        "POST /v2/models/resnet/infer"
    )
    assert not vision.received


def test_heavy_local_model_is_listed_where_it_runs(edge_models: Path) -> None:
    """A local model marked heavy (never run here) is listed with the cluster that serves it
    as its first route, not as `local` at the edge, which no request takes."""
    vision = FakeUpstream(name="vision", models=(), v2_models=("hotspot_detector",))
    with AppThread(vision.app) as upstream:
        settings = Settings.model_validate(
            {
                "models": {"repository": edge_models, "inference_threads": 1},
                "routing": {"models": {"hotspot_detector": {"heavy": True}}},
                "upstreams": [
                    {
                        "name": "vision",
                        "tier": "regional",
                        "protocols": ["kserve-v2"],
                        "models": ["hotspot_detector"],
                        "endpoints": [{"url": upstream.url}],
                        "health_check": {"enabled": False},
                    }
                ],
            }
        )
        with (
            RouterThread(settings) as router,
            openai.OpenAI(
                base_url=router.url + "/v1", api_key="sk-test", max_retries=0, timeout=TIMEOUT_S
            ) as sdk,
        ):
            listed = {m.id: m.model_extra or {} for m in sdk.models.list()}
    assert listed["hotspot_detector"]["tier"] == "regional"
    assert listed["hotspot_detector"]["served_by_all"] == ["vision"]
    assert listed["color_classifier"]["served_by"] == "local"


async def test_client_organization_does_not_ride_with_the_routers_key() -> None:
    """A client whose SDK names its OpenAI organization and project (OPENAI_ORG_ID) is served
    with the router's own key: the headers stay here, instead of making OpenAI refuse the
    router's key (401 mismatched_organization), which put the cluster in an auth cool-off
    for every client."""
    seen: list[dict[str, str]] = []

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        seen.append(dict(request.headers))
        if request.headers.get("OpenAI-Organization", "org-router") != "org-router":
            error = {"message": "mismatched organization", "code": "mismatched_organization"}
            return web.json_response({"error": error}, status=401)
        return web.json_response(FakeUpstream()._completion({"model": "gpt-test"}))

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", chat)
    async with serving(upstream) as upstream_url:
        cluster = central_chat_cluster(upstream_url, headers={"Authorization": "Bearer sk-router"})
        settings = Settings.model_validate({"upstreams": [cluster], "cache": {"enabled": False}})
        async with (
            serving(build_app(settings)) as url,
            openai.AsyncOpenAI(
                base_url=url + "/v1",
                api_key="sk-client",
                organization="org-client",
                project="proj-client",
                max_retries=0,
                timeout=TIMEOUT_S,
            ) as sdk,
        ):
            answer = await sdk.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert answer.choices[0].message.content
    assert len(seen) == 1
    names = {name.lower() for name in seen[0]}
    assert not names & {"openai-organization", "openai-project"}
    assert seen[0]["Authorization"] == "Bearer sk-router"
