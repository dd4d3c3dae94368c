"""forward.call against a scripted transport: what is retried (connect errors, 5xx, 429), what
is not (4xx, redirects, anything not replayable), and what bounds the retries (attempts, the
deadline, Retry-After, the retry budget)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from router.budget import BUDGET_HEADER
from router.errors import (
    ConnectFailed,
    UpstreamOverflow,
    UpstreamReset,
    UpstreamStatus,
    UpstreamTimeout,
)
from router.settings import ClusterSettings
from router.upstreams.client import UpstreamRequest
from router.upstreams.cluster import Cluster
from router.upstreams.forward import Forwarded, Outgoing, call
from router.upstreams.health import RECHECK_S

# Every test is bounded even if forward.call misbehaves.
LIMIT_S = 10.0


class FakeResponse:
    """Quacks like client.UpstreamResponse."""

    def __init__(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"{}"):
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict(headers or {}))
        self.body = body
        self.aborted = False
        self.read_called = False

    async def read(self, limit: int) -> bytes:
        self.read_called = True
        return self.body

    async def chunks(self) -> AsyncIterator[bytes]:
        self.read_called = True
        for byte in self.body:
            yield bytes([byte])

    def abort(self) -> None:
        self.aborted = True


Step = int | tuple[int, dict[str, str]] | BaseException


class ScriptedTransport:
    """Answers from a script, one step per send (then `default`); records what was sent.
    `answer` may instead pick a step from the request (e.g. by endpoint URL)."""

    def __init__(
        self,
        *steps: Step,
        default: Step = 200,
        delay_s: float = 0.0,
        answer: Callable[[UpstreamRequest], Step] | None = None,
    ) -> None:
        self.steps = list(steps)
        self.default = default
        self.delay_s = delay_s
        self.answer = answer
        self.sent: list[UpstreamRequest] = []
        self.sent_at: list[float] = []
        self.responses: list[FakeResponse] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.body = b"{}"

    async def send(
        self, request: UpstreamRequest, where: str, connect_timeout: float
    ) -> FakeResponse:
        self.sent.append(request)
        self.sent_at.append(asyncio.get_running_loop().time())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        if self.answer is not None:
            step = self.answer(request)
        else:
            step = self.steps.pop(0) if self.steps else self.default
        if isinstance(step, BaseException):
            raise step
        status, headers = step if isinstance(step, tuple) else (step, {})
        response = FakeResponse(status, headers, self.body)
        self.responses.append(response)
        return response


def make_cluster(endpoints: int = 1, **overrides: Any) -> Cluster:
    retry = {"base_backoff_ms": 1, "max_backoff_ms": 5, **overrides.pop("retry", {})}
    data = {
        "name": "regional",
        "tier": "regional",
        "endpoints": [{"url": f"http://127.0.0.1:{9000 + i}"} for i in range(endpoints)],
        "retry": retry,
        **overrides,
    }
    return Cluster.from_settings(ClusterSettings.model_validate(data))


def outgoing() -> Outgoing:
    return Outgoing("POST", "/v1/embeddings", {"Content-Type": "application/json"}, b"{}")


async def forward(
    cluster: Cluster,
    transport: ScriptedTransport,
    *,
    budget_s: float = 5.0,
    replayable: bool = True,
    stream: bool = False,
    request: Outgoing | None = None,
) -> Forwarded:
    deadline = asyncio.get_running_loop().time() + budget_s
    async with asyncio.timeout(LIMIT_S):
        return await call(
            cluster,
            transport,  # type: ignore[arg-type]
            request or outgoing(),
            deadline,
            replayable=replayable,
            stream=stream,
        )


class TestSuccess:
    async def test_first_try(self) -> None:
        """A 200 on the first try: one send, body read, budget passed on, nothing counted."""
        cluster = make_cluster()
        transport = ScriptedTransport()
        forwarded = await forward(cluster, transport, budget_s=2.0)
        assert forwarded.attempts == 1
        assert forwarded.body == b"{}"
        assert forwarded.response.status == 200
        assert len(transport.sent) == 1
        sent = transport.sent[0]
        assert sent.url == "http://127.0.0.1:9000/v1/embeddings"
        assert 0 < int(sent.headers[BUDGET_HEADER]) <= 2000
        assert cluster.counters.requests == 1
        assert cluster.counters.retries == 0
        assert cluster.active == 0

    async def test_stream_is_left_open_after_its_first_bytes(self) -> None:
        """A stream is handed back open: its first bytes read within the try (time to first
        byte is what the budget bounds), the rest left to the caller."""
        transport = ScriptedTransport()
        forwarded = await forward(make_cluster(), transport, stream=True)
        assert forwarded.body is None
        assert forwarded.first == b"{"
        assert forwarded.rest is not None
        assert [chunk async for chunk in forwarded.rest] == [b"}"]
        assert not transport.responses[0].aborted

    async def test_stream_stays_active_until_its_end(self) -> None:
        """A stream keeps its place in the breaker while its bytes flow, and gives it back
        once: when they end, however often `release` is called after."""
        cluster = make_cluster()
        forwarded = await forward(cluster, ScriptedTransport(), stream=True)
        assert cluster.active == 1
        assert forwarded.rest is not None
        assert [chunk async for chunk in forwarded.rest] == [b"}"]
        assert cluster.active == 0
        forwarded.release()
        assert cluster.active == 0

    async def test_empty_stream_is_not_held(self) -> None:
        """A stream with no body at all has ended already: nothing stays held."""
        cluster = make_cluster()
        transport = ScriptedTransport()
        transport.body = b""
        forwarded = await forward(cluster, transport, stream=True)
        assert forwarded.first == b""
        assert cluster.active == 0
        forwarded.release()
        assert cluster.active == 0

    async def test_body_reencoded_with_the_remaining_budget(self) -> None:
        """`body_for` gets the milliseconds left at each try, shrinking across retries."""
        seen: list[int] = []

        def body_for(left_ms: int) -> bytes:
            seen.append(left_ms)
            return b"{}"

        request = Outgoing("POST", "/v2/models/m/infer", {}, b"{}", body_for)
        transport = ScriptedTransport(503, delay_s=0.02)
        await forward(make_cluster(), transport, budget_s=3.0, request=request)
        assert len(seen) == 2
        assert 0 < seen[1] < seen[0] <= 3000
        assert [int(r.headers[BUDGET_HEADER]) for r in transport.sent] == seen


class TestWhatIsRetried:
    @pytest.mark.parametrize(
        "failure",
        [
            ConnectFailed("connect"),
            UpstreamReset("reset"),
            UpstreamTimeout("timeout"),
            500,
            502,
            503,
            504,
            429,
        ],
        ids=repr,
    )
    async def test_retried_once_then_served(self, failure: Step) -> None:
        """Connect errors, resets, timeouts, 5xx and 429 are retried; the retry is counted and
        a failed response's connection is closed, never reused."""
        cluster = make_cluster()
        transport = ScriptedTransport(failure)
        forwarded = await forward(cluster, transport)
        assert forwarded.attempts == 2
        assert forwarded.response.status == 200
        assert len(transport.sent) == 2
        assert cluster.counters.retries == 1
        assert cluster.retries_active == 0
        if isinstance(failure, int):
            assert transport.responses[0].aborted

    @pytest.mark.parametrize("status", [400, 401, 404, 409, 413, 422])
    async def test_client_errors_are_answers(self, status: int) -> None:
        """A 4xx is the upstream's answer: returned at once, not retried, not a health failure."""
        cluster = make_cluster()
        transport = ScriptedTransport(status)
        forwarded = await forward(cluster, transport)
        assert forwarded.response.status == status
        assert len(transport.sent) == 1
        assert cluster.counters.retries == 0
        assert cluster.counters.failures == 0

    @pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
    async def test_redirect_is_neither_followed_nor_retried(self, status: int) -> None:
        """A 3xx ends the call with an error: no second send anywhere, connection closed, the
        endpoint not blamed."""
        cluster = make_cluster()
        transport = ScriptedTransport((status, {"Location": "http://127.0.0.1:1/elsewhere"}))
        with pytest.raises(UpstreamStatus) as caught:
            await forward(cluster, transport)
        assert caught.value.upstream_status == status
        assert not caught.value.retryable
        assert len(transport.sent) == 1
        assert transport.responses[0].aborted
        assert cluster.counters.retries == 0
        assert cluster.counters.failures == 0

    async def test_not_modified_is_an_answer_not_a_redirect(self) -> None:
        """A 304 (to a conditional GET the client sent) is relayed as it came: it redirects
        nowhere, so it is not refused as an unfollowed redirect."""
        cluster = make_cluster()
        transport = ScriptedTransport((304, {"ETag": '"v1"'}))
        forwarded = await forward(cluster, transport)
        assert forwarded.response.status == 304
        assert len(transport.sent) == 1
        assert not transport.responses[0].aborted
        assert cluster.counters.failures == 0

    @pytest.mark.parametrize("failure", [ConnectFailed("connect"), 503, 429], ids=repr)
    async def test_never_retried_when_not_replayable(self, failure: Step) -> None:
        """A request that may not be replayed is sent exactly once."""
        cluster = make_cluster()
        transport = ScriptedTransport(failure)
        with pytest.raises((ConnectFailed, UpstreamStatus)):
            await forward(cluster, transport, replayable=False)
        assert len(transport.sent) == 1
        assert cluster.counters.retries == 0

    async def test_5xx_counts_against_health_but_429_does_not(self) -> None:
        """5xx is the endpoint's failure; 429 is back-pressure, retried but not blamed."""
        cluster = make_cluster(retry={"max_attempts": 1})
        for step in (500, 429, 503):
            with pytest.raises(UpstreamStatus):
                await forward(cluster, ScriptedTransport(step))
        assert cluster.counters.failures == 2


class TestWhatBoundsRetries:
    async def test_max_attempts(self) -> None:
        """An upstream that always fails gets max_attempts tries, no more."""
        cluster = make_cluster(retry={"max_attempts": 4})
        transport = ScriptedTransport(default=503)
        with pytest.raises(UpstreamStatus) as caught:
            await forward(cluster, transport)
        assert caught.value.upstream_status == 503
        assert len(transport.sent) == 4
        assert cluster.counters.retries == 3
        assert cluster.active == 0
        assert cluster.retries_active == 0

    async def test_retry_after_is_honoured(self) -> None:
        """Retry-After: 1 holds the retry back a second, whatever the (tiny) back-off says."""
        cluster = make_cluster()
        transport = ScriptedTransport((503, {"Retry-After": "1"}))
        forwarded = await forward(cluster, transport)
        assert forwarded.attempts == 2
        assert transport.sent_at[1] - transport.sent_at[0] >= 0.95

    async def test_retry_after_ms_is_honoured(self) -> None:
        """OpenAI's `retry-after-ms: 1000` holds the retry back a second too, and becomes
        the Retry-After of a call that gives up."""
        cluster = make_cluster()
        transport = ScriptedTransport((503, {"retry-after-ms": "1000"}))
        forwarded = await forward(cluster, transport)
        assert forwarded.attempts == 2
        assert transport.sent_at[1] - transport.sent_at[0] >= 0.95

    @pytest.mark.parametrize(
        "raw", ["nan", "-5", "soon", "1e99", "1_000", "\u0661\u0660\u0660\u0660"]
    )
    async def test_unusable_retry_after_ms_is_ignored(self, raw: str) -> None:
        """A retry-after-ms that is not a sane number of milliseconds is no wait at all."""
        cluster = make_cluster()
        transport = ScriptedTransport((503, {"retry-after-ms": raw}))
        forwarded = await forward(cluster, transport)
        assert forwarded.attempts == 2
        assert transport.sent_at[1] - transport.sent_at[0] < 0.9

    @pytest.mark.parametrize(
        "raw", ["\u00b2", "\u0663", "1_0", "Fri, 31 Dec 999999999999999999999 23:59:59 GMT"]
    )
    async def test_retry_after_not_in_ascii_digits_is_ignored(self, raw: str) -> None:
        """A Retry-After that is no ASCII number of seconds nor a usable date (a superscript
        two raised ValueError out of the call, a huge year OverflowError) is no wait at all:
        the retry comes after the back-off."""
        cluster = make_cluster()
        transport = ScriptedTransport((503, {"Retry-After": raw}))
        forwarded = await forward(cluster, transport)
        assert forwarded.attempts == 2
        assert transport.sent_at[1] - transport.sent_at[0] < 0.9

    async def test_retry_after_past_the_deadline_is_not_waited_for(self) -> None:
        """A Retry-After that would end past the deadline ends the call at once."""
        cluster = make_cluster()
        transport = ScriptedTransport((429, {"Retry-After": "30"}))
        with pytest.raises(UpstreamStatus) as caught:
            await forward(cluster, transport, budget_s=2.0)
        assert caught.value.retry_after == 30.0
        assert caught.value.status == 429  # "come back later" stays a rate limit for our client
        assert len(transport.sent) == 1

    async def test_stops_at_the_deadline(self) -> None:
        """Slow failures under a short deadline: no try starts after the deadline, and the
        call ends (the last try cut by the deadline) without using all its attempts."""
        cluster = make_cluster(retry={"max_attempts": 10})
        transport = ScriptedTransport(default=503, delay_s=0.1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.35
        with pytest.raises((UpstreamStatus, UpstreamTimeout)):
            await forward(cluster, transport, budget_s=0.35)
        assert 1 <= len(transport.sent) <= 4
        assert all(at < deadline for at in transport.sent_at)

    async def test_no_try_when_the_back_off_reaches_the_deadline(self) -> None:
        """A back-off longer than what is left ends the retries: no try is started with no
        time left (which would also blame the endpoint for our deadline)."""
        cluster = make_cluster(retry={"base_backoff_ms": 60_000, "max_backoff_ms": 60_000})
        transport = ScriptedTransport(default=503)
        with pytest.raises(UpstreamStatus):
            await forward(cluster, transport, budget_s=0.3)
        assert len(transport.sent) == 1
        assert cluster.counters.failures == 1

    async def test_per_try_timeout(self) -> None:
        """A try slower than request_timeout_ms is cut and retried; the cut try's time is
        remembered as a lower bound on that endpoint's latency."""
        cluster = make_cluster(request_timeout_ms=50)
        transport = ScriptedTransport(delay_s=30.0)
        with pytest.raises(UpstreamTimeout):
            await forward(cluster, transport, budget_s=5.0)
        assert len(transport.sent) == 3
        assert cluster.counters.failures == 3
        assert cluster.endpoints[0].health.expected_ms >= 50.0

    async def test_budget_denies_a_retry(self) -> None:
        """With no retry budget, a failure is not retried and the denial is counted."""
        cluster = make_cluster(retry={"min_concurrency": 0, "budget_percent": 0})
        transport = ScriptedTransport(503)
        with pytest.raises(UpstreamStatus):
            await forward(cluster, transport)
        assert len(transport.sent) == 1
        assert cluster.counters.retries_denied == 1

    async def test_budget_bounds_retries_of_concurrent_failures(self) -> None:
        """Ten requests failing together: retries in flight at once stay within the budget
        (20% of active, at least min_concurrency), not one retry each."""
        cluster = make_cluster(
            retry={"min_concurrency": 1, "budget_percent": 20},
            outlier={"consecutive_failures": 1000},  # keep ejection out of this
        )
        transport = ScriptedTransport(default=503, delay_s=0.05)
        results = await asyncio.gather(
            *(forward(cluster, transport) for _ in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, UpstreamStatus) for r in results)
        retries = len(transport.sent) - 10
        assert retries == cluster.counters.retries
        assert retries <= 2 + 2  # at most 2 (20% of 10) in the second wave, then fewer
        assert cluster.counters.retries_denied >= 8
        assert cluster.retries_active == 0

    async def test_cancelled_during_back_off_gives_back_its_slots(self) -> None:
        """A caller that goes away while a retry waits leaves no retry or request counted as
        in flight."""
        cluster = make_cluster()
        transport = ScriptedTransport((503, {"Retry-After": "5"}))
        async with asyncio.TaskGroup() as group:
            task = group.create_task(forward(cluster, transport, budget_s=30.0))
            await asyncio.sleep(0.2)
            assert cluster.retries_active == 1
            task.cancel()
        assert task.cancelled()
        assert cluster.retries_active == 0
        assert cluster.active == 0
        assert len(transport.sent) == 1


class TestRecheck:
    """A tier whose estimate timeouts raised is rechecked after RECHECK_S by one try."""

    @staticmethod
    def _slow_a_while_ago(cluster: Cluster) -> None:
        health = cluster.endpoints[0].health
        long_ago = asyncio.get_running_loop().time() - RECHECK_S - 1
        for _ in range(5):
            health.timed_out(300.0, now=long_ago)

    async def test_requests_during_a_recheck_see_the_raised_estimate(self) -> None:
        """While the try that rechecks the tier runs, the others decided meanwhile see the
        raised estimate (and skip the tier for tight budgets), not the prior."""
        cluster = make_cluster(expected_latency_ms=50)
        self._slow_a_while_ago(cluster)
        loop = asyncio.get_running_loop()
        assert cluster.view(loop.time()).expected_ms == 50.0  # the recheck is offered
        transport = ScriptedTransport(delay_s=0.3)
        recheck = asyncio.ensure_future(forward(cluster, transport))
        await asyncio.sleep(0.1)
        assert cluster.view(loop.time()).expected_ms > 300.0
        await recheck

    async def test_a_recheck_answered_fast_brings_the_tier_back_at_once(self) -> None:
        """A real answer to the recheck replaces the estimate the timeouts made."""
        cluster = make_cluster(expected_latency_ms=50)
        self._slow_a_while_ago(cluster)
        await forward(cluster, ScriptedTransport())
        assert cluster.view(asyncio.get_running_loop().time()).expected_ms < 10.0


class TestEndpointsAndBreaker:
    async def test_retry_goes_to_another_endpoint(self) -> None:
        """With one endpoint failing, every retry lands on the other and succeeds."""
        cluster = make_cluster(2, outlier={"consecutive_failures": 1000})

        def answer(request: UpstreamRequest) -> Step:
            return 503 if request.url.startswith("http://127.0.0.1:9000/") else 200

        transport = ScriptedTransport(answer=answer)
        for _ in range(20):
            forwarded = await forward(cluster, transport)
            assert forwarded.endpoint.index == 1
        bad = [r for r in transport.sent if r.url.startswith("http://127.0.0.1:9000/")]
        assert cluster.counters.retries == len(bad) > 0
        assert len(transport.sent) == 20 + len(bad)

    @pytest.mark.parametrize("endpoints", [1, 2, 3])
    async def test_a_chained_routers_failure_is_asked_of_each_endpoint_once(
        self, endpoints: int
    ) -> None:
        """A chained router's 502 naming a target it tried (after its own retries) is not
        asked of that endpoint again: only of the cluster's other endpoints, once each."""
        cluster = make_cluster(endpoints, retry={"max_attempts": 5})
        failed = (502, {"X-Route-Reason": "failed:central:upstream_status"})
        transport = ScriptedTransport(default=failed)
        with pytest.raises(UpstreamStatus) as caught:
            await forward(cluster, transport)
        assert caught.value.upstream_status == 502
        assert sorted(r.url for r in transport.sent) == [
            f"http://127.0.0.1:{9000 + i}/v1/embeddings" for i in range(endpoints)
        ]
        assert cluster.retries_active == 0

    async def test_a_chained_routers_own_failure_is_retried(self) -> None:
        """A chained router's 503 naming no target it tried (it sheds load) is retried as any
        5xx is, on the same endpoint when it is the only one."""
        cluster = make_cluster(1)
        transport = ScriptedTransport((503, {"X-Route-Reason": "overloaded"}))
        forwarded = await forward(cluster, transport)
        assert forwarded.attempts == 2

    async def test_failures_eject_then_the_other_endpoint_serves(self) -> None:
        """Five consecutive 5xx eject an endpoint; afterwards it receives nothing."""
        cluster = make_cluster(2, outlier={"consecutive_failures": 5, "base_ejection_s": 60})

        def answer(request: UpstreamRequest) -> Step:
            return 500 if request.url.startswith("http://127.0.0.1:9000/") else 200

        transport = ScriptedTransport(answer=answer)
        for _ in range(60):
            await forward(cluster, transport)
            if cluster.counters.ejections:
                break
        assert cluster.counters.ejections == 1
        assert cluster.endpoints[0].health.times_ejected == 1
        before = len(transport.sent)
        for _ in range(20):
            assert (await forward(cluster, transport)).endpoint.index == 1
        assert len(transport.sent) == before + 20

    async def test_overflow_when_the_breaker_is_full(self) -> None:
        """Past max_connections + max_pending the call fails at once with UpstreamOverflow,
        nothing is sent, and the upstream is not blamed."""
        cluster = make_cluster(max_connections=1, max_pending=0)
        slow = ScriptedTransport(delay_s=0.3)
        idle = ScriptedTransport()
        async with asyncio.TaskGroup() as group:
            first = group.create_task(forward(cluster, slow))
            await asyncio.sleep(0.05)
            with pytest.raises(UpstreamOverflow):
                await forward(cluster, idle)
        assert idle.sent == []
        assert first.result().response.status == 200
        assert cluster.counters.overflows == 1
        assert cluster.counters.failures == 0
        assert cluster.active == 0
