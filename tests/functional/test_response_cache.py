"""The response cache and single-flight (issue 5 items 1 and 2, TESTING.md S11): the real router
app with the cache on, in front of the demo colour classifier, a BYTES identity model and a
recording FakeUpstream, all on 127.0.0.1 in the test's own event loop.

What is proven is counted, not timed: how often a model executed (its v2 stats) and how many
requests the fake upstream received. Freshness runs on a fake clock put into the app's
ResponseCache, so Age values are exact; one test uses the real clock with a 1 s max-age.
The fake upstream can hold its answers behind a gate, so concurrent requests are known to be
in flight together before anything is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import re
import shutil
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import openai
import orjson
import pytest
import tritonclient.http.aio as triton_aio
from aiohttp import web
from aiohttp.test_utils import TestServer

from router.api.state import CACHE, TRAIL
from router.app import build_app
from router.audit import show
from router.cache import Outcome
from router.headers import CREDENTIALS
from router.resources import default_policy_bundle
from router.settings import Settings
from router.testing import (
    FakeUpstream,
    RouterThread,
    chat_forwarding_settings,
    identity_model,
    write_repository,
)

LIMIT_S = 10.0  # any single client call, and any wait for a condition
EDGE_MODELS = Path(__file__).resolve().parents[2] / "edge_models"
CLASSIFIER = "/v2/models/color_classifier/infer"
ECHO = "/v2/models/echo_model/infer"  # served by the fake upstream only
EMAIL = "jane.doe@example.com"


def rgb(values: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "rgb", "datatype": "FP32", "shape": [1, 3], "data": values}],
        **extra,
    }


def echo(text: str) -> dict[str, Any]:
    return {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 1], "data": [text]}]}


# -- plumbing ------------------------------------------------------------------------------


class Clock:
    """A monotonic clock for the app's ResponseCache that moves only when told to."""

    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Tally:
    """A count other tasks on this loop bump, that a test can wait on (bounded)."""

    def __init__(self) -> None:
        self.value = 0
        self._changed = asyncio.Event()

    def add(self) -> None:
        self.value += 1
        self._changed.set()

    async def reach(self, n: int, what: str) -> None:
        try:
            async with asyncio.timeout(LIMIT_S):
                while self.value < n:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[TestServer]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log=None)
    try:
        yield server
    finally:
        await server.close()


@dataclass
class Upstream:
    """A FakeUpstream behind a gate (answers wait while it is closed) whose answers can carry
    a chosen Cache-Control."""

    fake: FakeUpstream = field(
        default_factory=lambda: FakeUpstream(
            name="regional", models=("gpt-test",), v2_models=("echo_model",)
        )
    )
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: Tally = field(default_factory=Tally)  # requests that reached the gate
    cache_control: str | None = None  # None: as the fake sends it; "": no header at all
    extra_headers: dict[str, str] = field(default_factory=dict)  # on every POST answer
    extra_lines: list[tuple[str, str]] = field(default_factory=list)  # added, repeats allowed
    server: TestServer | None = None

    def __post_init__(self) -> None:
        self.gate.set()

    def app(self) -> web.Application:
        app = self.fake.app()
        app.middlewares.append(self._gated)
        app.on_response_prepare.append(self._with_cache_control)
        return app

    @web.middleware
    async def _gated(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.arrived.add()
        await self.gate.wait()
        return await handler(request)

    async def _with_cache_control(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.method != "POST":
            return
        response.headers.update(self.extra_headers)
        if self.cache_control is not None:
            response.headers.pop("Cache-Control", None)
            if self.cache_control:
                response.headers["Cache-Control"] = self.cache_control
        for name, value in self.extra_lines:
            response.headers.add(name, value)

    def requests(self, path: str) -> int:
        return len(self.fake.requests_to(path))


@dataclass
class Site:
    url: str
    app: web.Application
    upstream: Upstream
    clock: Clock
    entered: Tally = field(default_factory=Tally)  # requests that reached the handlers
    cancelled: Tally = field(default_factory=Tally)  # ... cancelled there (the client left)

    @web.middleware
    async def counting(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.entered.add()
        try:
            return await handler(request)
        except asyncio.CancelledError:
            self.cancelled.add()
            raise


def cluster(url: str) -> dict[str, Any]:
    return {
        "name": "regional",
        "tier": "regional",
        "endpoints": [{"url": url, "jurisdiction": "EU"}],
        "models": ["echo_model", "gpt-test"],
        "connect_timeout_ms": 500,
        "request_timeout_ms": 5000,
        "health_check": {"enabled": False},
        "outlier": {"consecutive_failures": 1000},  # failures here are on purpose
        # One try: a request counted at the fake is one the router made.
        "retry": {"max_attempts": 1, "base_backoff_ms": 1, "max_backoff_ms": 2},
    }


async def start_site(
    stack: contextlib.AsyncExitStack,
    repository: Path,
    *,
    cache: dict[str, Any] | None = None,
    bundle: Path | None = None,
    upstream_settings: dict[str, Any] | None = None,
    routing: dict[str, Any] | None = None,
) -> Site:
    upstream = Upstream()
    upstream.server = await stack.enter_async_context(serving(upstream.app()))
    upstream_url = str(upstream.server.make_url("")).rstrip("/")
    settings = Settings.model_validate(
        {
            "site": {"id": "edge-cache", "tier": "edge", "jurisdiction": "EU"},
            "models": {"repository": str(repository), "inference_threads": 1},
            "upstreams": [{**cluster(upstream_url), **(upstream_settings or {})}],
            "policy": {"bundle": str(bundle)} if bundle else {},
            "cache": {"enabled": True, **(cache or {})},
            "routing": routing or {},
        }
    )
    app = build_app(settings)
    clock = Clock()
    app[CACHE]._clock = clock  # freshness on our clock: exact Age values, no sleeps
    site = Site("", app, upstream, clock)
    app.middlewares.append(site.counting)
    server = await stack.enter_async_context(serving(app))
    site.url = str(server.make_url("")).rstrip("/")
    return site


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    @property
    def cache(self) -> str:
        return str(self.headers.get("X-Cache", ""))

    @property
    def reasons(self) -> list[str]:
        return str(self.headers.get("X-Route-Reason", "")).split(",")

    @property
    def age(self) -> int | None:
        raw = self.headers.get("Age")
        return None if raw is None else int(raw)

    def json(self) -> Any:
        return orjson.loads(self.body)


async def post(
    http: aiohttp.ClientSession,
    site: Site,
    path: str,
    body: bytes | dict[str, Any],
    headers: dict[str, str] | None = None,
) -> Answer:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(
        site.url + path,
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
    ) as response:
        return Answer(response.status, response.headers, await response.read())


async def executions(http: aiohttp.ClientSession, site: Site, model: str) -> int:
    """How many times the model's session ran, over every version (Triton's stats)."""
    async with http.get(f"{site.url}/v2/models/{model}/stats") as response:
        assert response.status == 200
        stats = await response.json()
    return sum(int(s["execution_count"]) for s in stats["model_stats"])


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo colour classifier and a BYTES identity model, both run on the site."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(EDGE_MODELS / "color_classifier", root / "color_classifier")
    return write_repository(root, {"echo_bytes": {1: identity_model("BYTES")}})


def bundle_with(root: Path, files: dict[str, str]) -> Path:
    """The default policy bundle with some files replaced."""
    folder = root / "bundle"
    shutil.copytree(default_policy_bundle(), folder)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
async def site(stack: contextlib.AsyncExitStack, repository: Path) -> Site:
    return await start_site(stack, repository)


# -- local answers -------------------------------------------------------------------------


class TestLocalAnswers:
    async def test_identical_request_is_a_hit_and_the_model_runs_once(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """A repeated v2 request is answered from the cache: same bytes, X-Cache HIT, an Age
        that grows with the clock, the tier that produced it, and one model execution."""
        first = await post(http, site, CLASSIFIER, rgb([1.0, 0.0, 0.0]))
        assert first.status == 200
        assert first.cache == "MISS"
        assert "local" in first.reasons
        assert first.age is None  # a fresh answer has no Age
        second = await post(http, site, CLASSIFIER, rgb([1.0, 0.0, 0.0]))
        assert (second.status, second.cache, second.age) == (200, "HIT", 0)
        assert second.body == first.body
        assert "cache_hit" in second.reasons
        assert second.headers["X-Served-By-Tier"] == "edge"
        site.clock.advance(7.4)
        third = await post(http, site, CLASSIFIER, rgb([1.0, 0.0, 0.0]))
        assert (third.cache, third.age) == ("HIT", 7)
        assert await executions(http, site, "color_classifier") == 1
        counts = site.app[CACHE].counts
        assert (counts[Outcome.MISS], counts[Outcome.HIT]) == (1, 2)

    async def test_a_hits_record_names_the_model_that_made_the_answer(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """Every record stands alone (TESTING.md A1): a hit's names the model, version and
        artefact sha256 that produced the answer, as its original's does, besides pointing
        at it."""
        first = await post(http, site, CLASSIFIER, rgb([0.0, 1.0, 0.0]))
        second = await post(http, site, CLASSIFIER, rgb([0.0, 1.0, 0.0]))
        assert (first.cache, second.cache) == ("MISS", "HIT")
        log_path = site.app[TRAIL]._log.path  # type: ignore[union-attr]
        for _ in range(int(LIMIT_S / 0.05)):  # records are written after the answer
            provenance = show(log_path, second.headers["X-Audit-Id"])
            if len(provenance.records) == 2:
                break
            await asyncio.sleep(0.05)
        hit, original = (located.entry for located in provenance.records)
        assert hit["cache_of"] == original["id"] == first.headers["X-Audit-Id"]
        assert original["model_sha256"]
        named = ("model", "served_by", "model_version", "model_sha256")
        assert {k: hit[k] for k in named} == {k: original[k] for k in named}

    async def test_different_input_is_a_miss(self, http: aiohttp.ClientSession, site: Site) -> None:
        """Another tensor value, another version or another request id is another answer."""
        base = await post(http, site, CLASSIFIER, rgb([1.0, 0.0, 0.0]))
        other = await post(http, site, CLASSIFIER, rgb([0.0, 0.0, 1.0]))
        versioned = await post(
            http, site, "/v2/models/color_classifier/versions/1/infer", rgb([1.0, 0.0, 0.0])
        )
        with_id = await post(http, site, CLASSIFIER, rgb([1.0, 0.0, 0.0], id="req-1"))
        assert [a.cache for a in (base, other, versioned, with_id)] == ["MISS"] * 4
        assert other.body != base.body
        assert versioned.body != base.body  # v1 is sharper than the default v2
        assert with_id.json()["id"] == "req-1"
        assert await executions(http, site, "color_classifier") == 4

    async def test_key_order_and_whitespace_do_not_matter(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """The key is over the canonical JSON: the same request written differently is the
        same entry."""
        compact = (
            b'{"inputs":[{"name":"rgb","datatype":"FP32","shape":[1,3],"data":[0.2,0.4,0.6]}]}'
        )
        reordered = (
            b'{ "inputs" : [ {\n  "data": [0.2, 0.4, 0.6],\n  "shape": [1, 3],'
            b'\n  "datatype": "FP32",\n  "name": "rgb"\n} ]\n}\n'
        )
        first = await post(http, site, CLASSIFIER, compact)
        second = await post(http, site, CLASSIFIER, reordered)
        assert (first.cache, second.cache) == ("MISS", "HIT")
        assert second.body == first.body
        assert await executions(http, site, "color_classifier") == 1

    async def test_the_latency_budget_is_not_part_of_the_key(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """`parameters.timeout` is the request's budget (a router in front sets it to what
        remains of its own, different every time): requests differing only in it share an
        entry; any other parameter still makes another one."""
        values = [0.3, 0.6, 0.9]
        other = {"timeout": 5_000_000, "x": 1}
        answers = [
            await post(http, site, CLASSIFIER, rgb(values, parameters={"timeout": 2_000_000})),
            await post(http, site, CLASSIFIER, rgb(values, parameters={"timeout": 1_999_123})),
            await post(http, site, CLASSIFIER, rgb(values)),
            await post(http, site, CLASSIFIER, rgb(values, parameters=other)),
        ]
        assert [a.cache for a in answers] == ["MISS", "HIT", "HIT", "MISS"]
        assert await executions(http, site, "color_classifier") == 2

    async def test_tritonclient_binary_tensors_are_cached(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """The real tritonclient with binary tensors both ways gets the same outputs twice from
        one execution (the replay keeps Inference-Header-Content-Length); a different binary
        payload is executed again."""
        host_port = site.url.removeprefix("http://")

        async def classify(values: np.ndarray) -> np.ndarray:
            tensor = triton_aio.InferInput("rgb", list(values.shape), "FP32")
            tensor.set_data_from_numpy(values, binary_data=True)
            wanted = [triton_aio.InferRequestedOutput("probs", binary_data=True)]
            result = await client.infer("color_classifier", [tensor], outputs=wanted)
            probs = result.as_numpy("probs")
            assert probs is not None
            return probs

        async with triton_aio.InferenceServerClient(host_port, conn_timeout=LIMIT_S) as client:
            rows = np.array([[0.1, 0.9, 0.2], [0.5, 0.5, 0.5]], dtype=np.float32)
            first = await classify(rows)
            second = await classify(rows)
            third = await classify(rows[::-1].copy())
        np.testing.assert_array_equal(first, second)
        np.testing.assert_array_equal(third, first[::-1])
        assert await executions(http, site, "color_classifier") == 2


# -- what the client's Cache-Control asks ------------------------------------------------------


class TestRequestDirectives:
    async def test_no_cache_skips_the_lookup_but_stores(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """no-cache always runs the model, and what it answers serves the next plain request."""
        body = rgb([0.5, 0.5, 0.5])
        plain = await post(http, site, CLASSIFIER, body)
        forced = await post(http, site, CLASSIFIER, body, {"Cache-Control": "no-cache"})
        assert (plain.cache, forced.cache) == ("MISS", "MISS")
        assert await executions(http, site, "color_classifier") == 2
        site.clock.advance(3)
        again = await post(http, site, CLASSIFIER, body)
        assert (again.cache, again.age) == ("HIT", 3)  # the no-cache answer replaced the first

    async def test_no_cache_first_still_stores(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """A no-cache request on an empty cache stores its answer for later requests."""
        body = rgb([0.3, 0.3, 0.9])
        forced = await post(http, site, CLASSIFIER, body, {"Cache-Control": "No-Cache"})
        plain = await post(http, site, CLASSIFIER, body)
        assert (forced.cache, plain.cache) == ("MISS", "HIT")
        assert await executions(http, site, "color_classifier") == 1

    async def test_no_store_bypasses_and_stores_nothing(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """no-store: neither served from nor kept in the cache, even when an entry exists."""
        body = rgb([0.0, 1.0, 0.0])
        first = await post(http, site, CLASSIFIER, body, {"Cache-Control": "no-store"})
        assert first.cache == "BYPASS"
        plain = await post(http, site, CLASSIFIER, body)
        assert plain.cache == "MISS"  # nothing had been stored
        again = await post(http, site, CLASSIFIER, body, {"Cache-Control": "no-cache, no-store"})
        assert again.cache == "BYPASS"  # not served from the entry that now exists
        assert await executions(http, site, "color_classifier") == 3
        assert site.app[CACHE].counts[Outcome.BYPASS] == 2

    async def test_every_cache_control_line_counts(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """Cache-Control sent on two lines is one list: a no-store on the second bypasses."""
        body = rgb([0.9, 0.1, 0.4])
        await post(http, site, CLASSIFIER, body)
        async with http.post(
            site.url + CLASSIFIER,
            data=orjson.dumps(body),
            headers=[
                ("Content-Type", "application/json"),
                ("Cache-Control", "max-age=600"),
                ("Cache-Control", "no-store"),
            ],
        ) as response:
            assert response.headers["X-Cache"] == "BYPASS"

    async def test_max_age_bounds_the_age_of_a_hit(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """max-age=N takes no stored answer older than N s: the model runs again (RFC 9111
        §5.2.1.1), and a younger answer is still a HIT."""
        body = rgb([0.2, 0.6, 0.2])
        await post(http, site, CLASSIFIER, body)
        site.clock.advance(10)
        young = await post(http, site, CLASSIFIER, body, {"Cache-Control": "max-age=30"})
        assert (young.cache, young.age) == ("HIT", 10)
        old = await post(http, site, CLASSIFIER, body, {"Cache-Control": "max-age=5"})
        assert old.cache == "MISS"  # and stored anew
        site.clock.advance(1)
        zero = await post(http, site, CLASSIFIER, body, {"Cache-Control": "max-age=0"})
        assert zero.cache == "MISS"
        assert await executions(http, site, "color_classifier") == 3

    async def test_min_fresh_wants_freshness_left(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """min-fresh=N takes only an answer fresh for N more seconds (default TTL 300 s)."""
        body = rgb([0.1, 0.2, 0.7])
        await post(http, site, CLASSIFIER, body)
        site.clock.advance(250)
        lasting = await post(http, site, CLASSIFIER, body, {"Cache-Control": "min-fresh=10"})
        assert lasting.cache == "HIT"
        short = await post(http, site, CLASSIFIER, body, {"Cache-Control": "min-fresh=60"})
        assert short.cache == "MISS"
        assert await executions(http, site, "color_classifier") == 2

    async def test_only_if_cached_answers_504_without_asking_anyone(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """only-if-cached with nothing stored is 504 not_cached at once: the upstream is never
        asked; once stored, the same request is a HIT (RFC 9111 §5.2.1.7)."""
        only = {"Cache-Control": "only-if-cached"}
        missing = await post(http, site, ECHO, echo("only"), only)
        assert missing.status == 504
        assert "only-if-cached" in missing.json()["error"]
        assert site.upstream.requests(ECHO) == 0
        await post(http, site, ECHO, echo("only"))
        hit = await post(http, site, ECHO, echo("only"), only)
        assert (hit.status, hit.cache) == (200, "HIT")
        assert site.upstream.requests(ECHO) == 1

    async def test_only_if_cached_on_an_uncached_api_is_504(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """A chat request (never cached by default) with only-if-cached is 504, not forwarded."""
        chat = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
        answer = await post(
            http, site, "/v1/chat/completions", chat, {"Cache-Control": "only-if-cached"}
        )
        assert (answer.status, answer.json()["error"]["code"]) == (504, "not_cached")
        assert site.upstream.requests("/v1/chat/completions") == 0

    async def test_max_stale_takes_a_stale_answer_while_online(
        self, stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, repository: Path
    ) -> None:
        """max-stale=N: a client that accepts staleness gets the stored answer marked STALE
        with its true Age, without asking the upstream; beyond N it is fetched anew."""
        site = await start_site(
            stack, repository, cache={"kserve_v2_ttl_s": 10, "max_stale_s": 100}
        )
        await post(http, site, ECHO, echo("patient"))
        site.clock.advance(30)
        stale = await post(http, site, ECHO, echo("patient"), {"Cache-Control": "max-stale=25"})
        assert (stale.status, stale.cache, stale.age) == (200, "STALE", 30)
        assert site.upstream.requests(ECHO) == 1
        any_age = await post(http, site, ECHO, echo("patient"), {"Cache-Control": "max-stale"})
        assert any_age.cache == "STALE"
        strict = await post(http, site, ECHO, echo("patient"), {"Cache-Control": "max-stale=5"})
        assert strict.cache == "MISS"
        assert site.upstream.requests(ECHO) == 2


# -- what the upstream's Cache-Control says -------------------------------------------------------


class TestUpstreamFreshness:
    async def test_upstream_answers_are_cached(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """A forwarded v2 answer is cached like a local one: the upstream is asked once."""
        first = await post(http, site, ECHO, echo("hello"))
        second = await post(http, site, ECHO, echo("hello"))
        assert (first.status, first.cache, second.cache) == (200, "MISS", "HIT")
        assert second.body == first.body
        assert second.headers["X-Served-By-Tier"] == "regional"
        assert site.upstream.requests(ECHO) == 1

    @pytest.mark.parametrize(
        "directive", ["no-store", "private", "private, max-age=600", "no-cache"]
    )
    async def test_answers_the_upstream_keeps_private_are_not_stored(
        self, http: aiohttp.ClientSession, site: Site, directive: str
    ) -> None:
        """An upstream answer marked no-store, private or no-cache is never shared."""
        site.upstream.cache_control = directive
        answers = [await post(http, site, ECHO, echo("private")) for _ in range(3)]
        assert [a.cache for a in answers] == ["MISS"] * 3
        assert site.upstream.requests(ECHO) == 3

    async def test_upstream_max_age_replaces_the_default(
        self, stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, repository: Path
    ) -> None:
        """max-age=60 from the upstream outlives the site's default of 5 s, and ends at 60."""
        site = await start_site(stack, repository, cache={"kserve_v2_ttl_s": 5})
        site.upstream.cache_control = "public, max-age=60"
        await post(http, site, ECHO, echo("long"))
        site.clock.advance(59)
        hit = await post(http, site, ECHO, echo("long"))
        assert (hit.cache, hit.age) == ("HIT", 59)
        assert hit.headers["Cache-Control"] == "public, max-age=60"
        site.clock.advance(1)
        assert (await post(http, site, ECHO, echo("long"))).cache == "MISS"
        assert site.upstream.requests(ECHO) == 2

    async def test_private_on_one_line_and_max_age_on_another_is_not_stored(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """An upstream answer with `Cache-Control: private` and, on a second line,
        `Cache-Control: max-age=600` is private: never shared."""
        site.upstream.cache_control = ""
        site.upstream.extra_lines = [("Cache-Control", "private"), ("Cache-Control", "max-age=600")]
        answers = [await post(http, site, ECHO, echo("two lines")) for _ in range(2)]
        assert [a.cache for a in answers] == ["MISS", "MISS"]
        assert site.upstream.requests(ECHO) == 2

    async def test_an_expires_in_the_past_is_not_kept(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """An upstream answer with no max-age and `Expires: 0` (already expired) is not kept
        for the 300 s default."""
        site.upstream.cache_control = ""
        site.upstream.extra_headers = {"Expires": "0"}
        answers = [await post(http, site, ECHO, echo("expired")) for _ in range(2)]
        assert [a.cache for a in answers] == ["MISS", "MISS"]
        assert site.upstream.requests(ECHO) == 2

    async def test_an_expires_with_an_age_is_not_counted_down_twice(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """An answer from behind an HTTP cache: `Expires` in 600 s and `Age: 3000` (the
        cache has held it 50 min of its hour). Measured from now, the Expires date already
        counts that age: it stays fresh for those 600 s, Age growing from 3000."""
        site.upstream.cache_control = ""
        ahead = email.utils.formatdate(time.time() + 600, usegmt=True)
        site.upstream.extra_headers = {"Expires": ahead, "Age": "3000"}
        await post(http, site, ECHO, echo("behind a cdn"))
        site.clock.advance(60)
        hit = await post(http, site, ECHO, echo("behind a cdn"))
        assert (hit.cache, hit.age) == ("HIT", 3060)
        site.clock.advance(600)
        assert (await post(http, site, ECHO, echo("behind a cdn"))).cache == "MISS"

    async def test_short_upstream_max_age_is_honoured(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """max-age=1 from the upstream ends the entry after a second, default 300 or not."""
        site.upstream.cache_control = "max-age=1"
        await post(http, site, ECHO, echo("short"))
        assert (await post(http, site, ECHO, echo("short"))).cache == "HIT"
        site.clock.advance(1.5)
        assert (await post(http, site, ECHO, echo("short"))).cache == "MISS"
        assert site.upstream.requests(ECHO) == 2

    async def test_max_age_on_the_real_clock(
        self, stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, repository: Path
    ) -> None:
        """Without a fake clock: an answer with max-age=1 is no longer a HIT 1.2 s later."""
        site = await start_site(stack, repository)
        site.app[CACHE]._clock = asyncio.get_running_loop().time  # back to a real clock
        site.upstream.cache_control = "max-age=1"
        loop = asyncio.get_running_loop()
        first = await post(http, site, ECHO, echo("real"))
        stored = loop.time()
        second = await post(http, site, ECHO, echo("real"))
        # A HIT unless this machine stalled a whole second between the two requests.
        assert second.cache == "HIT" or loop.time() - stored >= 1.0
        await asyncio.sleep(max(0.0, stored + 1.2 - loop.time()))
        third = await post(http, site, ECHO, echo("real"))
        assert first.cache == "MISS"
        assert third.cache == "MISS"
        assert third.body == first.body

    async def test_an_upstream_age_counts_against_freshness(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """An answer already 50 s old upstream (a chained router's own cache hit) with
        max-age=60 is fresh here for 10 s more, and its Age on a hit says how old it is."""
        site.upstream.cache_control = "max-age=60"
        site.upstream.extra_headers = {"Age": "50"}
        await post(http, site, ECHO, echo("aged"))
        site.clock.advance(5)
        hit = await post(http, site, ECHO, echo("aged"))
        assert (hit.cache, hit.age) == ("HIT", 55)
        site.clock.advance(6)
        assert (await post(http, site, ECHO, echo("aged"))).cache == "MISS"

    async def test_an_answer_is_served_only_to_requests_it_varies_with(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """Vary: X-Variant: a request with another X-Variant is not served the stored answer
        (RFC 9111 §4.1); the same value is a HIT."""
        site.upstream.extra_headers = {"Vary": "X-Variant"}
        first = await post(http, site, ECHO, echo("varied"), {"X-Variant": "a"})
        same = await post(http, site, ECHO, echo("varied"), {"x-variant": "a"})
        other = await post(http, site, ECHO, echo("varied"), {"X-Variant": "b"})
        absent = await post(http, site, ECHO, echo("varied"))
        assert [a.cache for a in (first, same, other, absent)] == ["MISS", "HIT", "MISS", "MISS"]
        assert site.upstream.requests(ECHO) == 3

    async def test_an_entry_keeps_no_value_of_the_headers_it_varies_on(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """Vary: Cookie: the stored answer matches a later request by the cookie, yet the
        cache holds no copy of it (keys and entries are keyed digests, never the values)."""
        canary = "session=CANARY-4a7f19c2"
        site.upstream.extra_headers = {"Vary": "Cookie"}
        first = await post(http, site, ECHO, echo("by cookie"), {"Cookie": canary})
        again = await post(http, site, ECHO, echo("by cookie"), {"Cookie": canary})
        assert (first.cache, again.cache) == ("MISS", "HIT")
        entries = list(site.app[CACHE]._entries.values())
        assert entries
        assert all(canary.encode() not in repr(entry).encode() for entry in entries)

    async def test_vary_accept_encoding_does_not_split_the_cache(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """Vary: Accept-Encoding (as a compressing upstream sends it) is about a header the
        router never forwards and an encoding it undoes: clients asking for other encodings
        share the entry."""
        site.upstream.extra_headers = {"Vary": "Accept-Encoding"}
        await post(http, site, ECHO, echo("encoded"), {"Accept-Encoding": "gzip"})
        plain = await post(http, site, ECHO, echo("encoded"), {"Accept-Encoding": "identity"})
        assert plain.cache == "HIT"
        assert site.upstream.requests(ECHO) == 1

    async def test_vary_star_is_never_stored(self, http: aiohttp.ClientSession, site: Site) -> None:
        """Vary: * varies on what no cache can see: the answer is not kept."""
        site.upstream.extra_headers = {"Vary": "Accept, *"}
        answers = [await post(http, site, ECHO, echo("star")) for _ in range(2)]
        assert [a.cache for a in answers] == ["MISS", "MISS"]
        assert site.upstream.requests(ECHO) == 2

    async def test_error_answers_are_not_stored(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """An upstream failure is not cached: the next request asks again and gets an answer."""
        site.upstream.fake.behaviour.fail_status = 500
        site.upstream.fake.behaviour.fail_times = 1
        failed = await post(http, site, ECHO, echo("flaky"))
        assert failed.status == 502
        ok = await post(http, site, ECHO, echo("flaky"))
        assert (ok.status, ok.cache) == (200, "MISS")
        assert (await post(http, site, ECHO, echo("flaky"))).cache == "HIT"
        assert site.upstream.requests(ECHO) == 2


class TestEscalation:
    async def test_a_stand_in_for_a_failed_escalation_is_not_kept(
        self, stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, repository: Path
    ) -> None:
        """Red scores 0.63 on the edge model, below 0.9: while the bigger model upstream
        fails, the local answer stands in, marked no-store and never cached, so once the
        upstream is back the next request escalates instead of replaying the stand-in."""
        escalate = {"threshold": 0.9, "to_model": "echo_model"}
        site = await start_site(
            stack, repository, routing={"models": {"color_classifier": {"escalate": escalate}}}
        )
        site.upstream.fake.behaviour.fail_status = 503
        stand_in = await post(http, site, CLASSIFIER, rgb([1.0, 0.0, 0.0]))
        assert stand_in.status == 200
        assert stand_in.reasons[0] == "local"
        assert stand_in.reasons[1].startswith("escalation_failed:")
        assert stand_in.headers["Cache-Control"] == "no-store"
        site.upstream.fake.behaviour.fail_status = 0
        again = await post(http, site, CLASSIFIER, rgb([1.0, 0.0, 0.0]))
        assert (again.cache, again.reasons) == (
            "MISS",
            ["local", "escalated_low_confidence:regional"],
        )

    async def test_an_escalation_the_upstream_refuses_keeps_the_local_answer(
        self, stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, repository: Path
    ) -> None:
        """The bigger model's tier answers 4xx (its model refuses our inputs): the client
        gets the local answer it would have had, marked escalation_failed, not that 4xx."""
        escalate = {"threshold": 0.9, "to_model": "echo_model"}
        site = await start_site(
            stack, repository, routing={"models": {"color_classifier": {"escalate": escalate}}}
        )
        site.upstream.fake.behaviour.fail_status = 400  # e.g. its inputs differ from ours
        answer = await post(http, site, CLASSIFIER, rgb([1.0, 0.0, 0.0]))
        assert site.upstream.requests(ECHO) == 1
        assert answer.status == 200, answer.body
        assert answer.json()["model_name"] == "color_classifier"
        assert answer.reasons[1].startswith("escalation_failed:")

    async def test_an_escalated_answer_is_not_recorded_as_the_local_models(
        self, stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, repository: Path
    ) -> None:
        """The audit record of an escalated answer names no local artefact: the edge model's
        version and sha256 did not produce it (an upstream served it: both empty)."""
        escalate = {"threshold": 0.9, "to_model": "echo_model"}
        site = await start_site(
            stack, repository, routing={"models": {"color_classifier": {"escalate": escalate}}}
        )
        answer = await post(http, site, CLASSIFIER, rgb([1.0, 0.0, 0.0]))
        assert answer.reasons == ["local", "escalated_low_confidence:regional"]
        log_path = site.app[TRAIL]._log.path  # type: ignore[union-attr]
        for _ in range(int(LIMIT_S / 0.05)):  # records are written after the answer
            provenance = show(log_path, answer.headers["X-Audit-Id"])
            if provenance.records:
                break
            await asyncio.sleep(0.05)
        record = provenance.records[0].entry
        assert (record["served_tier"], record["served_by"]) == ("regional", "regional/0")
        assert (record["model_version"], record["model_sha256"]) == ("", "")


# -- streams -------------------------------------------------------------------------------


class TestStreams:
    @pytest.fixture
    async def site(self, stack: contextlib.AsyncExitStack, repository: Path) -> Site:
        """Chat answers may be reused for a minute; the upstream's streams state no lifetime."""
        site = await start_site(stack, repository, cache={"openai_ttl_s": 60})
        site.upstream.cache_control = ""
        return site

    @pytest.fixture
    async def sdk(self, site: Site) -> AsyncIterator[openai.AsyncOpenAI]:
        async with openai.AsyncOpenAI(
            base_url=site.url + "/v1", api_key="sk-test", max_retries=0, timeout=LIMIT_S
        ) as client:
            yield client

    async def test_a_stream_is_recorded_and_replayed_as_sse(
        self, site: Site, sdk: openai.AsyncOpenAI
    ) -> None:
        """The openai SDK streams the same content twice; the upstream streamed it once."""
        messages: Any = [{"role": "user", "content": "tell me about caches"}]

        async def stream() -> tuple[Any, list[str], Any]:
            raw = await sdk.chat.completions.with_raw_response.create(
                model="gpt-test",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
            pieces, usage = [], None
            async for chunk in raw.parse():
                pieces += [c.delta.content or "" for c in chunk.choices]
                usage = chunk.usage or usage
            return raw.headers, pieces, usage

        first_headers, first, first_usage = await stream()
        site.clock.advance(12)
        second_headers, second, second_usage = await stream()
        assert first_headers["X-Cache"] == "MISS"
        assert (second_headers["X-Cache"], second_headers["Age"]) == ("HIT", "12")
        assert second_headers["Content-Type"].startswith("text/event-stream")
        assert "".join(first) == "regional heard: tell me about caches"
        assert second == first
        assert second_usage == first_usage is not None
        assert site.upstream.requests("/v1/chat/completions") == 1

    async def test_the_replay_is_byte_identical(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """What a replay sends is exactly what the upstream's stream delivered, [DONE] too."""
        body = {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        first = await post(http, site, "/v1/chat/completions", body)
        second = await post(http, site, "/v1/chat/completions", body)
        assert (first.cache, second.cache) == ("MISS", "HIT")
        assert second.body == first.body
        assert second.body.endswith(b"data: [DONE]\n\n")
        assert site.upstream.requests("/v1/chat/completions") == 1

    async def test_a_broken_stream_is_not_stored(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """A stream cut by the upstream ends in an error event and is never replayed."""
        site.upstream.fake.behaviour.break_stream_after = 2
        body = {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "y"}]}
        broken = await post(http, site, "/v1/chat/completions", body)
        assert b'"error"' in broken.body
        site.upstream.fake.behaviour.break_stream_after = None
        whole = await post(http, site, "/v1/chat/completions", body)
        assert whole.cache == "MISS"
        assert whole.body.endswith(b"data: [DONE]\n\n")
        assert b'"error"' not in whole.body
        assert site.upstream.requests("/v1/chat/completions") == 2

    async def test_a_stream_that_came_with_an_error_event_is_not_stored(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """A chained router ends its stream with an error event (its own upstream broke off)
        and a clean end: that is no answer to replay either."""
        behaviour = site.upstream.fake.behaviour
        behaviour.break_stream_after, behaviour.break_with_error = 2, "upstream_stream_broken"
        body = {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "e"}]}
        broken = await post(http, site, "/v1/chat/completions", body)
        assert b'"upstream_stream_broken"' in broken.body
        behaviour.break_stream_after = None
        whole = await post(http, site, "/v1/chat/completions", body)
        assert whole.cache == "MISS"
        assert whole.body.endswith(b"data: [DONE]\n\n")
        assert site.upstream.requests("/v1/chat/completions") == 2

    async def test_chat_is_not_cached_without_a_route_ttl(
        self, stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, repository: Path
    ) -> None:
        """openai_ttl_s 0 (the default): chat answers are samples, each request is asked for."""
        site = await start_site(stack, repository)
        body = {"model": "gpt-test", "messages": [{"role": "user", "content": "z"}]}
        answers = [await post(http, site, "/v1/chat/completions", body) for _ in range(2)]
        assert [a.status for a in answers] == [200, 200]
        assert "HIT" not in [a.cache for a in answers]
        assert site.upstream.requests("/v1/chat/completions") == 2

    async def test_chat_is_cached_when_the_upstream_says_so(
        self, stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, repository: Path
    ) -> None:
        """openai_ttl_s 0, but the upstream's answer carries max-age=60: it is reused."""
        site = await start_site(stack, repository)
        site.upstream.cache_control = "max-age=60"
        body = {"model": "gpt-test", "messages": [{"role": "user", "content": "z"}]}
        answers = [await post(http, site, "/v1/chat/completions", body) for _ in range(2)]
        assert [a.cache for a in answers] == ["MISS", "HIT"]
        assert site.upstream.requests("/v1/chat/completions") == 1


# -- single-flight -------------------------------------------------------------------------------


async def together(
    http: aiohttp.ClientSession, site: Site, n: int, body: dict[str, Any]
) -> list[Answer]:
    """n identical requests in flight at once, held at the upstream's closed gate until all
    of them reached the router and one reached the upstream; then the gate opens."""
    site.upstream.gate.clear()
    async with asyncio.timeout(LIMIT_S), asyncio.TaskGroup() as group:
        tasks = [group.create_task(post(http, site, ECHO, body)) for _ in range(n)]
        await site.entered.reach(n, f"{n} requests to reach the router")
        await site.upstream.arrived.reach(1, "the first request to reach the upstream")
        await asyncio.sleep(0.1)  # the others are past parse and classify, on the flight
        site.upstream.gate.set()
    return [task.result() for task in tasks]


class TestSingleFlight:
    async def test_concurrent_identical_misses_share_one_upstream_call(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """Twenty identical requests while the upstream is slow: one upstream request, twenty
        identical answers, nineteen of them marked coalesced."""
        answers = await together(http, site, 20, echo("together"))
        assert site.upstream.requests(ECHO) == 1
        assert [a.status for a in answers] == [200] * 20
        assert len({a.body for a in answers}) == 1
        coalesced = [a for a in answers if "coalesced" in a.reasons]
        assert len(coalesced) == 19
        assert all(a.cache == "MISS" for a in answers)
        leader = next(a for a in answers if "coalesced" not in a.reasons)
        assert "forward:regional" in leader.reasons
        assert (await post(http, site, ECHO, echo("together"))).cache == "HIT"

    async def test_coalesced_answers_say_who_served_them(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """Every answer carries X-Served-By-Tier and its route, a coalesced one too."""
        answers = await together(http, site, 3, echo("who"))
        assert sum("coalesced" in a.reasons for a in answers) == 2
        assert [a.headers.get("X-Served-By-Tier") for a in answers] == ["regional"] * 3
        assert all("forward:regional" in a.reasons for a in answers)

    async def test_an_upstream_error_reaches_every_waiter(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """The one upstream call fails: every waiter gets the same error, none is cached."""
        site.upstream.fake.behaviour.fail_status = 500
        answers = await together(http, site, 10, echo("doomed"))
        assert site.upstream.requests(ECHO) == 1
        assert [a.status for a in answers] == [502] * 10
        assert len({a.json()["error"] for a in answers}) == 1
        assert "answered 500" in answers[0].json()["error"]
        # Each error tells the one story, the followers' too: where it was tried, what failed.
        failed = "failed:regional:upstream_status"
        assert all(failed in a.reasons for a in answers), [a.reasons for a in answers]
        assert sum("coalesced" in a.reasons for a in answers) == 9
        site.upstream.fake.behaviour.fail_status = 0
        assert (await post(http, site, ECHO, echo("doomed"))).cache == "MISS"

    async def test_one_waiter_disconnecting_does_not_cancel_the_others(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """The client whose request started the upstream call goes away: its handler is
        cancelled, the call is not, and every other waiter gets the answer."""
        site.upstream.gate.clear()
        own = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT_S))
        async with asyncio.timeout(LIMIT_S), own, asyncio.TaskGroup() as group:
            leader = group.create_task(post(own, site, ECHO, echo("stay")))
            await site.upstream.arrived.reach(1, "the leader's upstream call")
            followers = [group.create_task(post(http, site, ECHO, echo("stay"))) for _ in range(4)]
            await site.entered.reach(5, "the followers to reach the router")
            await asyncio.sleep(0.1)  # ... and to join the flight
            leader.cancel()  # the client goes away: its connection is closed
            await site.cancelled.reach(1, "the router to see the leader leave")
            await asyncio.sleep(0.05)
            assert site.cancelled.value == 1  # the leader's handler only, not the followers'
            site.upstream.gate.set()
        assert leader.cancelled()
        answers = [task.result() for task in followers]
        assert [a.status for a in answers] == [200] * 4
        assert all("coalesced" in a.reasons for a in answers)
        # The leader's client left, not theirs: its `client_gone` is no reason of theirs.
        assert all("client_gone" not in a.reasons for a in answers)
        assert site.upstream.requests(ECHO) == 1
        assert (await post(http, site, ECHO, echo("stay"))).cache == "HIT"

    async def test_a_follower_waits_no_longer_than_its_own_budget(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """A follower with a 300 ms budget joins a flight that takes 2 s: it gets its 504
        when its budget ends, not the leader's answer 2 s later; the leader still gets it."""
        site.upstream.gate.clear()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(LIMIT_S), asyncio.TaskGroup() as group:
            leader = group.create_task(post(http, site, ECHO, echo("patient")))
            await site.upstream.arrived.reach(1, "the leader's upstream call")
            started = loop.time()
            hurried = await post(http, site, ECHO, echo("patient"), {"X-Latency-Budget-Ms": "300"})
            waited = loop.time() - started
            site.upstream.gate.set()
        assert hurried.status == 504
        assert waited < 1.5  # its budget, not the leader's upstream call
        assert leader.result().status == 200
        assert site.upstream.requests(ECHO) == 1

    async def test_a_leader_out_of_budget_does_not_fail_its_followers(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """The leader has 300 ms, its follower the default budget, the upstream takes 1 s: the
        leader gets its 504, the follower (with time left) still gets the answer."""
        site.upstream.gate.clear()
        async with asyncio.timeout(LIMIT_S), asyncio.TaskGroup() as group:
            hurried = group.create_task(
                post(http, site, ECHO, echo("late"), {"X-Latency-Budget-Ms": "300"})
            )
            await site.upstream.arrived.reach(1, "the leader's upstream call")
            patient = group.create_task(post(http, site, ECHO, echo("late")))
            await site.entered.reach(2, "the follower to reach the router")
            await asyncio.sleep(1.0)
            site.upstream.gate.set()
        assert hurried.result().status == 504
        assert patient.result().status == 200, patient.result().body

    @pytest.mark.parametrize("directive", ["private", "no-store", "max-age=60"])
    async def test_a_private_answer_is_not_handed_to_followers(
        self, http: aiohttp.ClientSession, site: Site, directive: str
    ) -> None:
        """An upstream answer marked private or no-store (or varying on everything) is the
        leader's alone: each follower asks the upstream itself, as a shared cache must."""
        site.upstream.cache_control = directive
        if directive.startswith("max-age"):
            site.upstream.extra_headers = {"Vary": "*"}
        answers = await together(http, site, 4, echo("mine alone"))
        assert [a.status for a in answers] == [200] * 4
        assert not any("coalesced" in a.reasons for a in answers)
        assert site.upstream.requests(ECHO) == 4

    async def test_followers_of_a_leader_that_left_point_at_no_missing_record(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """The leader's client goes away, so the leader writes no audit record: every
        follower's record, and a later HIT's, must resolve to records that exist, and a
        follower's record still names the tier that served it."""
        site.upstream.gate.clear()
        own = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT_S))
        async with asyncio.timeout(LIMIT_S), own, asyncio.TaskGroup() as group:
            leader = group.create_task(post(own, site, ECHO, echo("orphan")))
            await site.upstream.arrived.reach(1, "the leader's upstream call")
            followers = [
                group.create_task(post(http, site, ECHO, echo("orphan"))) for _ in range(3)
            ]
            await site.entered.reach(4, "the followers to reach the router")
            await asyncio.sleep(0.1)
            leader.cancel()
            await site.cancelled.reach(1, "the router to see the leader leave")
            site.upstream.gate.set()
        answers = [task.result() for task in followers]
        hit = await post(http, site, ECHO, echo("orphan"))
        assert hit.cache == "HIT"
        log_path = site.app[TRAIL]._log.path  # type: ignore[union-attr]
        for answer in [*answers, hit]:
            audit_id = answer.headers["X-Audit-Id"]
            for _ in range(int(LIMIT_S / 0.05)):  # records are written after the answer
                provenance = show(log_path, audit_id)
                if provenance.records:
                    break
                await asyncio.sleep(0.05)
            assert provenance.records, audit_id
            assert provenance.missing is None, audit_id
            assert provenance.records[-1].entry["served_tier"] == "regional"
            assert "client_gone" not in provenance.records[0].entry["reasons"], audit_id

    @pytest.mark.parametrize(
        "opt_out",
        [{"no_coalesce_paths": ["/v2/models/echo_model/"]}, {"coalesce": False}],
        ids=["per-route", "everywhere"],
    )
    async def test_opted_out_routes_are_not_coalesced(
        self,
        stack: contextlib.AsyncExitStack,
        http: aiohttp.ClientSession,
        repository: Path,
        opt_out: dict[str, Any],
    ) -> None:
        """With coalescing off for the route, each concurrent request is its own upstream call."""
        site = await start_site(stack, repository, cache=opt_out)
        site.upstream.gate.clear()
        async with asyncio.timeout(LIMIT_S), asyncio.TaskGroup() as group:
            tasks = [group.create_task(post(http, site, ECHO, echo("apart"))) for _ in range(5)]
            await site.upstream.arrived.reach(5, "five upstream calls")
            site.upstream.gate.set()
        answers = [task.result() for task in tasks]
        assert [a.status for a in answers] == [200] * 5
        assert not any("coalesced" in a.reasons for a in answers)
        assert site.upstream.requests(ECHO) == 5

    async def test_other_routes_still_coalesce_when_one_opts_out(
        self, stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, repository: Path
    ) -> None:
        """no_coalesce_paths names prefixes: a route outside them keeps single-flight."""
        site = await start_site(
            stack, repository, cache={"no_coalesce_paths": ["/v2/models/other/"]}
        )
        answers = await together(http, site, 5, echo("still"))
        assert sum("coalesced" in a.reasons for a in answers) == 4
        assert site.upstream.requests(ECHO) == 1


# -- stale answers ---------------------------------------------------------------------------------


async def upstream_fails(site: Site) -> None:
    site.upstream.fake.behaviour.fail_status = 503


async def upstream_stops(site: Site) -> None:
    assert site.upstream.server is not None
    await site.upstream.server.close()


async def upstream_too_slow(site: Site) -> None:
    site.upstream.fake.behaviour.delay_s = 3.0


class TestStale:
    @pytest.fixture
    async def site(self, stack: contextlib.AsyncExitStack, repository: Path) -> Site:
        """Answers are fresh for 1 s and may stand in for 100 s more."""
        return await start_site(stack, repository, cache={"kserve_v2_ttl_s": 1, "max_stale_s": 100})

    @pytest.mark.parametrize(
        "outage",
        [upstream_fails, upstream_stops, upstream_too_slow],
        ids=["503", "stopped", "too-slow"],
    )
    async def test_a_stale_answer_stands_in_when_the_upstream_is_gone(
        self,
        http: aiohttp.ClientSession,
        site: Site,
        outage: Callable[[Site], Awaitable[None]],
    ) -> None:
        """Past its freshness, with the upstream failing, down or too slow for the budget, the
        old answer is served marked STALE with its true age."""
        first = await post(http, site, ECHO, echo("old news"))
        assert first.cache == "MISS"
        await outage(site)
        site.clock.advance(42.6)
        stale = await post(http, site, ECHO, echo("old news"), {"X-Latency-Budget-Ms": "500"})
        assert (stale.status, stale.cache, stale.age) == (200, "STALE", 42)
        assert stale.body == first.body
        assert "cache_stale" in stale.reasons
        assert stale.headers["X-Served-By-Tier"] == "regional"
        assert site.app[CACHE].counts[Outcome.STALE] == 1

    @pytest.mark.parametrize(
        "directive", ["max-age=1, must-revalidate", "proxy-revalidate", "s-maxage=1"]
    )
    async def test_an_answer_that_must_be_revalidated_is_never_served_stale(
        self, http: aiohttp.ClientSession, site: Site, directive: str
    ) -> None:
        """must-revalidate, proxy-revalidate or s-maxage (which a shared cache reads as
        proxy-revalidate): past freshness with the upstream failing, the client gets the
        error, not the stale copy (RFC 9111 §5.2.2.2, §5.2.2.10); max-stale does not change it."""
        site.upstream.cache_control = directive
        first = await post(http, site, ECHO, echo("revalidate"))
        assert first.cache == "MISS"
        assert (await post(http, site, ECHO, echo("revalidate"))).cache == "HIT"
        await upstream_fails(site)
        site.clock.advance(5)
        answer = await post(http, site, ECHO, echo("revalidate"))
        assert (answer.status, answer.headers.get("X-Cache")) == (503, None)
        asked = await post(http, site, ECHO, echo("revalidate"), {"Cache-Control": "max-stale"})
        assert (asked.status, asked.headers.get("X-Cache")) == (503, None)

    async def test_a_stale_answer_is_not_served_while_the_upstream_answers(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """Past freshness with a working upstream, the answer is fetched (and stored) anew."""
        await post(http, site, ECHO, echo("refresh"))
        site.clock.advance(5)
        again = await post(http, site, ECHO, echo("refresh"))
        assert again.cache == "MISS"
        assert (await post(http, site, ECHO, echo("refresh"))).cache == "HIT"
        assert site.upstream.requests(ECHO) == 2

    async def test_past_max_stale_the_failure_is_the_answer(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """An entry older than freshness + max_stale is gone: the client gets the error."""
        await post(http, site, ECHO, echo("ancient"))
        site.upstream.fake.behaviour.fail_status = 503
        site.clock.advance(102)
        answer = await post(http, site, ECHO, echo("ancient"))
        assert answer.status == 503
        assert "X-Cache" not in answer.headers

    async def test_a_client_error_is_not_replaced_by_a_stale_answer(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """Only a missing or failing target is covered for: a bad X-Data-Class header is a
        400 whatever the cache holds."""
        await post(http, site, ECHO, echo("strict"))
        site.clock.advance(5)
        answer = await post(http, site, ECHO, echo("strict"), {"X-Data-Class": "bogus"})
        assert answer.status == 400


# -- scope: data classes, personal data, unscanned requests ---------------------------------------


class TestScope:
    async def test_data_classes_do_not_share_entries(
        self,
        stack: contextlib.AsyncExitStack,
        http: aiohttp.ClientSession,
        repository: Path,
        tmp_path: Path,
    ) -> None:
        """The same body declared public and internal are two entries, each hit on its own."""
        bundle = bundle_with(tmp_path, {"tenants.yaml": "default:\n  data_class: public\n"})
        site = await start_site(stack, repository, bundle=bundle)
        body = rgb([0.9, 0.1, 0.1])
        public = await post(http, site, CLASSIFIER, body)
        internal = await post(http, site, CLASSIFIER, body, {"X-Data-Class": "internal"})
        assert (public.cache, internal.cache) == ("MISS", "MISS")
        assert await executions(http, site, "color_classifier") == 2
        assert (await post(http, site, CLASSIFIER, body)).cache == "HIT"
        again = await post(http, site, CLASSIFIER, body, {"X-Data-Class": "INTERNAL"})
        assert again.cache == "HIT"
        assert await executions(http, site, "color_classifier") == 2

    async def test_a_router_in_front_keeps_its_tenants_apart(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """Behind an edge, requests of the edge's tenants arrive under one credential: the
        tenant the edge names (X-Layer-Router-Tenant) scopes the entry, so one of its tenants
        never gets (nor learns the Age of) another's answer here."""
        body = rgb([0.1, 0.9, 0.1])
        line3 = {"X-Layer-Router-Tenant": "line-3"}
        first = await post(http, site, CLASSIFIER, body, line3)
        other = await post(http, site, CLASSIFIER, body, {"X-Layer-Router-Tenant": "line-4"})
        again = await post(http, site, CLASSIFIER, body, line3)
        assert [a.cache for a in (first, other, again)] == ["MISS", "MISS", "HIT"]

    async def test_the_tenant_goes_upstream(self, http: aiohttp.ClientSession, site: Site) -> None:
        """A forwarded request names the tenant this router resolved, whatever the client
        claimed (which only narrows the scope, as a digest), so the next router scopes its
        cache by it."""
        await post(http, site, ECHO, echo("hello"), {"X-Layer-Router-Tenant": "someone-else"})
        (seen,) = site.upstream.fake.requests_to(ECHO)
        (tenant,) = seen.headers.getall("X-Layer-Router-Tenant")
        assert tenant.startswith("anonymous>")
        assert "someone-else" not in tenant

    async def test_tenants_of_a_router_in_front_stay_apart_one_tier_further(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """Two tenants of an edge reach this (regional) router under the edge's credential:
        the router behind it gets two scopes too, so central keeps their answers apart as
        regional does; the edge's tenant goes on only as a keyed digest, never as written."""
        for tenant in ("line-3", "line-4", "line-3"):
            headers = {"X-Layer-Router-Tenant": tenant, "Cache-Control": "no-store"}
            await post(http, site, ECHO, echo("hello"), headers)
        sent = [
            r.headers.getall("X-Layer-Router-Tenant") for r in site.upstream.fake.requests_to(ECHO)
        ]
        assert sent[0] == sent[2] != sent[1]
        assert all(len(v) == 1 and v[0].startswith("anonymous>") for v in sent)
        assert not any("line-" in v[0] for v in sent)

    async def test_a_header_cannot_lower_the_class_into_another_entry(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """The default tenant is internal: X-Data-Class public does not lower it, so both
        requests are the same (internal) entry."""
        body = rgb([0.1, 0.9, 0.1])
        plain = await post(http, site, CLASSIFIER, body)
        public = await post(http, site, CLASSIFIER, body, {"X-Data-Class": "public"})
        assert (plain.cache, public.cache) == ("MISS", "HIT")

    async def test_personal_data_is_never_cached_by_default(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """An email in a string tensor makes the request personal, stricter than the bundle's
        max_data_class (internal): BYPASS every time, the model runs every time."""
        body = echo(f"please write to {EMAIL}")
        answers = [await post(http, site, "/v2/models/echo_bytes/infer", body) for _ in range(2)]
        assert [a.status for a in answers] == [200, 200]
        assert [a.cache for a in answers] == ["BYPASS", "BYPASS"]
        assert answers[0].json()["outputs"][0]["data"] == [f"please write to {EMAIL}"]
        assert await executions(http, site, "echo_bytes") == 2

    async def test_personal_data_in_a_forwarded_request_is_not_cached(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """The same holds for an upstream's answer to a personal request."""
        for _ in range(2):
            answer = await post(http, site, ECHO, echo(f"mail {EMAIL}"))
            assert (answer.status, answer.cache) == (200, "BYPASS")
        assert site.upstream.requests(ECHO) == 2

    async def test_personal_data_is_cached_where_the_bundle_allows_it(
        self,
        stack: contextlib.AsyncExitStack,
        http: aiohttp.ClientSession,
        repository: Path,
        tmp_path: Path,
    ) -> None:
        """A bundle whose max_data_class is personal lets such requests be cached, and the
        same body declared sensitive still is not."""
        bundle = bundle_with(tmp_path, {"cache.yaml": "max_data_class: personal\n"})
        site = await start_site(stack, repository, bundle=bundle)
        body = echo(f"please write to {EMAIL}")
        path = "/v2/models/echo_bytes/infer"
        first = await post(http, site, path, body)
        second = await post(http, site, path, body)
        sensitive = await post(http, site, path, body, {"X-Data-Class": "sensitive"})
        assert [first.cache, second.cache, sensitive.cache] == ["MISS", "HIT", "BYPASS"]
        assert await executions(http, site, "echo_bytes") == 2

    async def test_binary_bytes_tensors_are_scanned_and_cached(
        self, http: aiohttp.ClientSession, site: Site
    ) -> None:
        """A binary BYTES tensor (tritonclient's default) is read as text like a JSON one:
        clean, its answer is kept and the repeat is a hit."""
        text = b"opaque bytes"
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "INPUT0",
                        "datatype": "BYTES",
                        "shape": [1, 1],
                        "parameters": {"binary_data_size": 4 + len(text)},
                    }
                ],
                "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}],
            }
        )
        body = header + struct.pack("<I", len(text)) + text
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        }
        answers = [
            await post(http, site, "/v2/models/echo_bytes/infer", body, headers) for _ in range(2)
        ]
        assert [a.status for a in answers] == [200, 200]
        assert [a.cache for a in answers] == ["MISS", "HIT"]
        assert answers[1].json()["outputs"][0]["data"] == ["opaque bytes"]
        assert await executions(http, site, "echo_bytes") == 1

    async def test_requests_that_cannot_be_scanned_are_not_cached(
        self,
        stack: contextlib.AsyncExitStack,
        http: aiohttp.ClientSession,
        repository: Path,
        tmp_path: Path,
    ) -> None:
        """A body over the detection cap is not scanned: answered here, but never cached."""
        detection = (default_policy_bundle() / "detection.yaml").read_text(encoding="utf-8")
        detection = re.sub(r"^max_body_bytes:.*$", "max_body_bytes: 64", detection, flags=re.M)
        bundle = bundle_with(tmp_path, {"detection.yaml": detection})
        site = await start_site(stack, repository, bundle=bundle)
        body = echo("a text long enough to pass the detection cap of this bundle")
        answers = [await post(http, site, "/v2/models/echo_bytes/infer", body) for _ in range(2)]
        assert [a.status for a in answers] == [200, 200]
        assert [a.cache for a in answers] == ["BYPASS", "BYPASS"]
        assert all("unscanned" in a.reasons for a in answers)
        assert await executions(http, site, "echo_bytes") == 2

    async def test_the_cache_off_serves_everything_afresh(
        self, stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, repository: Path
    ) -> None:
        """cache.enabled false: every request runs, marked BYPASS."""
        site = await start_site(stack, repository, cache={"enabled": False})
        answers = [await post(http, site, CLASSIFIER, rgb([0.2, 0.2, 0.2])) for _ in range(2)]
        assert [a.cache for a in answers] == ["BYPASS", "BYPASS"]
        assert await executions(http, site, "color_classifier") == 2
        only = {"Cache-Control": "only-if-cached"}
        refused = await post(http, site, CLASSIFIER, rgb([0.2, 0.2, 0.2]), only)
        assert refused.status == 504  # nothing is ever stored: only-if-cached cannot be met
        assert await executions(http, site, "color_classifier") == 2

    @pytest.mark.parametrize("header", sorted(CREDENTIALS))
    async def test_an_answer_to_one_credential_is_not_served_to_another(
        self,
        stack: contextlib.AsyncExitStack,
        http: aiohttp.ClientSession,
        repository: Path,
        header: str,
    ) -> None:
        """Where the upstream checks the caller's own credentials (Bearer, Azure's api-key or
        X-Api-Key, all forwarded), a cached answer must not let a different credential skip
        that check; the same credential is a HIT."""
        site = await start_site(
            stack, repository, upstream_settings={"forward_authorization": True}
        )
        await post(http, site, ECHO, echo("mine"), {header: "Bearer alice-key"})
        other = await post(http, site, ECHO, echo("mine"), {header: "Bearer mallory"})
        assert other.cache != "HIT"
        assert site.upstream.requests(ECHO) == 2
        again = await post(http, site, ECHO, echo("mine"), {header: "Bearer alice-key"})
        assert again.cache == "HIT"


async def test_a_stream_whose_client_left_after_its_done_is_kept(tmp_path: Path) -> None:
    """The openai SDK closes at `data: [DONE]`, before a chained router's end arrives: the
    stream was whole, so it is kept, and the next identical request is a HIT."""
    asked = 0
    ended = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        nonlocal asked
        asked += 1
        await request.read()
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "max-age=60"}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await response.write(b'data: {"choices": []}\n\ndata: [DONE]\n\n')
        with contextlib.suppress(ConnectionError):
            await ended.wait()  # its end comes later
            await response.write_eof()
        return response

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", chat)
    body = orjson.dumps({"model": "gpt-test", "stream": True, "messages": []})
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    async with serving(upstream) as server, aiohttp.ClientSession() as http:
        upstream_url = str(server.make_url("")).rstrip("/")
        settings = chat_forwarding_settings(upstream_url, cache={"enabled": True})
        with RouterThread(settings) as router:
            reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
            writer.write(head + body)
            received = b""
            async with asyncio.timeout(LIMIT_S):
                while b"data: [DONE]" not in received:
                    received += await reader.read(65536)
            writer.close()  # before the stream's end
            await asyncio.sleep(0.2)  # the router notices the client left
            ended.set()
            url = router.url + "/v1/chat/completions"
            async with asyncio.timeout(LIMIT_S), http.post(url, data=body) as again:
                assert again.headers["X-Cache"] == "HIT"
                assert (await again.read()).endswith(b"data: [DONE]\n\n")
    assert asked == 1


async def test_an_answer_echoing_a_scanned_header_is_not_another_users_hit(
    tmp_path: Path,
) -> None:
    """A bundle caching personal requests: the upstream sees x-user-email as a token and
    echoes it, the answer restores it for the caller; another user's request with the same
    body must not be served that answer (the e-mail of the first), while a repeat is a HIT."""
    asked = 0

    async def chat(request: web.Request) -> web.Response:
        nonlocal asked
        asked += 1
        await request.read()
        text = f"hello {request.headers.get('x-user-email', '')}"
        answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
        return web.json_response(answer)

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", chat)
    bundle = bundle_with(tmp_path, {"cache.yaml": "max_data_class: personal\n"})
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    async with serving(upstream) as server, aiohttp.ClientSession() as http:
        upstream_url = str(server.make_url("")).rstrip("/")
        settings = chat_forwarding_settings(
            upstream_url,
            cache={"enabled": True, "openai_ttl_s": 60},
            policy={"bundle": str(bundle)},
        )
        with RouterThread(settings) as router:
            url = f"http://127.0.0.1:{router.port}/v1/chat/completions"
            seen = []
            for who in ("bob@example.com", "carol@example.com", "bob@example.com"):
                async with http.post(url, json=body, headers={"x-user-email": who}) as r:
                    answer = await r.json()
                    seen.append((r.headers["X-Cache"], answer["choices"][0]["message"]["content"]))
    assert seen == [
        ("MISS", "hello bob@example.com"),
        ("MISS", "hello carol@example.com"),
        ("HIT", "hello bob@example.com"),
    ]
    assert asked == 2
