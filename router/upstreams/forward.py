"""Send one request to a cluster: pick an endpoint, bound each try by the deadline, retry what
is safe to retry (tenacity), feed health and outlier ejection, honour Retry-After.

Only `call` is public. It returns an open `UpstreamResponse` whose status is < 500 and not 429;
the body is read already (`Forwarded.body`) unless the caller asked for a stream, whose first
bytes are read within the try's deadline too (`Forwarded.first`, the rest in `Forwarded.rest`):
an LLM server answers its headers at once and spends the time before the first token. A long
answer a `Relay` allows comes back open the same way (`body` None; `relay.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial

from tenacity import (
    AsyncRetrying,
    RetryCallState,
)

from router.budget import BUDGET_HEADER, remaining_ms
from router.errors import (
    DeadlineExceeded,
    NoHealthyTarget,
    UpstreamError,
    UpstreamOverflow,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamTlsFailed,
)
from router.upstreams import backoff, refusal
from router.upstreams.client import Transport, UpstreamRequest, UpstreamResponse
from router.upstreams.cluster import Cluster, Endpoint
from router.upstreams.refusal import CHAINED_REASONS
from router.upstreams.relay import Relay, read_or_open

# A chained layer-router's route reason: the tier behind it is offline (`decide.Failure`).
OFFLINE = "offline"
FAILED = "failed:"  # a router's reason for a target that it tried and that failed


@dataclass(slots=True)
class Outgoing:
    """What to send; `body_for` re-encodes the body for a remaining budget (v2 timeout)."""

    method: str
    path: str  # path and query, appended to the endpoint's base URL
    headers: dict[str, str]
    body: bytes
    body_for: Callable[[int], bytes] | None = None


@dataclass(slots=True)
class Forwarded:
    response: UpstreamResponse
    body: bytes | None  # None when streaming
    endpoint: Endpoint
    attempts: int
    upstream_ms: float
    first: bytes = b""  # a stream's first body bytes (empty: none, or not a stream)
    rest: AsyncIterator[bytes] | None = None  # a stream's bytes after `first`
    # A stream holds its place in the cluster's breaker until it ends: whoever relays it
    # calls this when done (once is enough; it also runs when `rest` ends or is dropped).
    release: Callable[[], None] = lambda: None
    # The most of its body that may be held whole (the cluster's max_response_bytes): also
    # for a stream that turns out to be a JSON answer, read whole after all.
    limit: int = 64 * 1024 * 1024
    where: str = ""  # "cluster NAME endpoint N", for errors about the answer


class _Hold:
    """One request's place among the cluster's active ones, given back exactly once: when
    `call` returns, or for a stream when its bytes end (drained, broken, closed, dropped)."""

    __slots__ = ("_cluster", "_released", "stream")

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._released = False
        self.stream: object | None = None  # the token of the try whose stream holds it

    @property
    def streaming(self) -> bool:
        return self.stream is not None

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._cluster.done()


async def _held(
    chunks: AsyncIterator[bytes], hold: _Hold, token: object, idle_s: float, where: str
) -> AsyncIterator[bytes]:
    """`chunks`, each within `idle_s` of the last (a stream that stalls is broken, not kept
    open forever), giving the stream's place back however they end. Started by the
    first-byte read, so even a stream nobody relays is closed (and gives it back) when
    collected."""
    try:
        while True:
            try:
                async with asyncio.timeout(idle_s):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise UpstreamTimeout(f"{where}: no byte for {idle_s * 1000:.0f} ms") from None
            yield chunk
    finally:
        if hold.stream is token:  # a failed try's leftover never gives back another's place
            hold.release()


async def call(
    cluster: Cluster,
    transport: Transport,
    outgoing: Outgoing,
    deadline: float,
    *,
    replayable: bool,
    stream: bool = False,
    relay: Relay | None = None,
) -> Forwarded:
    """`relay`: a non-stream request whose long answer may come back open, as a stream's."""
    if deadline <= asyncio.get_running_loop().time():
        # Nothing left to spend (a slower tier used it up): a try could only time out and
        # blame an upstream that did nothing wrong.
        raise DeadlineExceeded(f"cluster {cluster.name}: the latency budget is spent")
    if not cluster.admit():
        raise UpstreamOverflow(f"cluster {cluster.name}: too many requests in flight")
    # A stream counts as active until its last byte, not only until its headers: long
    # streams would otherwise fill the connections unseen by the breaker, and the requests
    # queued behind them would time out and be blamed on the upstream.
    hold = _Hold(cluster)
    try:
        forwarded = await _with_retries(
            cluster,
            transport,
            outgoing,
            deadline,
            replayable,
            hold if stream or relay is not None else None,
            None if stream else relay,
        )
    finally:
        if not hold.streaming:
            hold.release()
    if hold.streaming:
        forwarded.release = hold.release
    return forwarded


async def _with_retries(
    cluster: Cluster,
    transport: Transport,
    outgoing: Outgoing,
    deadline: float,
    replayable: bool,
    hold: _Hold | None,
    relay: Relay | None,
) -> Forwarded:
    """The first try runs bare (the common case pays nothing for the retry machinery); only a
    failure that may be retried enters tenacity for the remaining attempts."""
    retry = cluster.settings.retry
    loop = asyncio.get_running_loop()
    tried: list[Endpoint] = []
    # Endpoints (indexes) whose chained router failed after its own retries: not asked again.
    spent: set[int] = set()
    reserved = False  # a slot in the retry budget, held from its grant to the end of that try

    def may_retry(exc: BaseException | None, tries: int) -> bool:
        nonlocal reserved
        if tries >= retry.max_attempts:
            return False
        if not (replayable and isinstance(exc, UpstreamError) and exc.retryable):
            return False
        if isinstance(exc, UpstreamStatus) and exc.tried_behind:
            spent.add(tried[-1].index)
            if all(ep.index in spent for ep in cluster.live(loop.time())):
                return False
        wait = exc.retry_after if isinstance(exc, UpstreamStatus) and exc.retry_after else 0.0
        if loop.time() + wait >= deadline or not cluster.retry_allowed():
            return False
        # Taken at the grant, not after the back-off: failures that arrive together must not
        # all find the budget empty.
        cluster.retries_active += 1
        reserved = True
        return True

    def release() -> None:
        nonlocal reserved
        if reserved:
            cluster.retries_active -= 1
            reserved = False

    def retry_granted(state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome is not None else None
        # tenacity counts from the first retry; the bare first try came before it.
        return may_retry(error, state.attempt_number + 1)

    def out_of_time(state: RetryCallState) -> bool:
        # A try that would start at the deadline could only time out, and blame the endpoint.
        return loop.time() + state.upcoming_sleep >= deadline

    async def attempt(number: int) -> Forwarded:
        endpoint = cluster.pick(loop.time(), avoid=tried[-1] if tried else None, exclude=spent)
        if endpoint is None:
            raise NoHealthyTarget(f"cluster {cluster.name}: no live endpoint")
        tried.append(endpoint)
        forwarded = await _try(cluster, transport, endpoint, outgoing, deadline, hold, relay)
        forwarded.attempts = number
        return forwarded

    try:
        return await attempt(1)
    except UpstreamError as exc:
        if not may_retry(exc, 1):
            raise
        first_failure = exc
    try:
        wait = backoff.Wait(
            retry.base_backoff_ms / 1000, retry.max_backoff_ms / 1000, deadline, loop
        )
        delay = wait.after(first_failure, 1)
        if loop.time() + delay >= deadline:
            raise first_failure
        await asyncio.sleep(delay)
        retrying = AsyncRetrying(
            stop=out_of_time,  # max_attempts is enforced by may_retry
            wait=wait,
            retry=retry_granted,
            reraise=True,
        )
        async for state in retrying:
            with state:
                cluster.counters.retries += 1
                try:
                    return await attempt(state.retry_state.attempt_number + 1)
                finally:
                    release()
    finally:
        release()  # granted, then stopped by the deadline, or cancelled during the back-off
    raise AssertionError("tenacity re-raises the last error")  # pragma: no cover


async def _try(
    cluster: Cluster,
    transport: Transport,
    endpoint: Endpoint,
    outgoing: Outgoing,
    deadline: float,
    hold: _Hold | None,
    relay: Relay | None = None,
) -> Forwarded:
    """One try; `hold` is given for a stream (or an answer that may be relayed), whose first
    bytes are part of the try."""
    loop = asyncio.get_running_loop()
    settings = cluster.settings
    now = loop.time()
    left = remaining_ms(deadline, now)
    # The body first: re-encoding a v2 header updates its Inference-Header-Content-Length.
    body = outgoing.body_for(left) if outgoing.body_for else outgoing.body
    headers = {**outgoing.headers, BUDGET_HEADER: str(left)}
    request = UpstreamRequest(outgoing.method, endpoint.base + outgoing.path, headers, body)
    where = f"cluster {cluster.name} endpoint {endpoint.index}"
    started = time.perf_counter()
    timeout = min(settings.request_timeout_ms / 1000, deadline - now)
    endpoint.health.try_started(now)
    response: UpstreamResponse | None = None
    rest: AsyncIterator[bytes] | None = None
    head: bytes | None = None
    token = object()  # names this try's stream to the hold
    try:
        async with asyncio.timeout(timeout):
            response = await transport.send(request, where, settings.connect_timeout_ms / 1000)
            _check_status(response, where)
            await refusal.check(cluster, response, where)
            idle_s = settings.request_timeout_ms / 1000
            if hold is not None and relay is not None:
                held = partial(_held, hold=hold, token=token, idle_s=idle_s, where=where)
                opened = await read_or_open(
                    response, relay, settings.max_response_bytes, held, where
                )
                data, head, rest = opened.body, opened.head, opened.rest
            elif hold is not None:
                # Time to first byte, not to headers, is what the budget and the latency
                # estimate are about: headers alone would let a slow tier look fast.
                rest = _held(response.chunks(), hold, token, idle_s, where)
                head = await anext(rest, None)  # None: an empty stream, ended already
                data = None
            else:
                data = await response.read(settings.max_response_bytes)
    except TimeoutError:
        if request.queued:
            # All connections busy until the try ran out: our own overflow, not the
            # upstream's slowness (never blamed, never ejected).
            cluster.counters.overflows += 1
            raise UpstreamOverflow(f"{where}: no free connection within the try") from None
        if response is not None:
            response.abort()  # half read: the connection must not be reused
        # Slower than the client's budget is not broken: remember the latency (so the tier is
        # skipped for such budgets) but blame the endpoint only for its own timeout.
        error = UpstreamTimeout(f"{where}: no answer within {timeout * 1000:.0f} ms")
        if timeout < settings.request_timeout_ms / 1000:
            waited_ms = (time.perf_counter() - started) * 1000
            endpoint.health.timed_out(waited_ms, loop.time())
            error.should_retry = False  # the client's budget ran out: so would a retry's
        else:
            _failed(cluster, endpoint, started, timed_out=True)
        raise error from None
    except UpstreamError as exc:
        if isinstance(exc, UpstreamTlsFailed):
            cluster.tls_refused("request")
        if exc.health_failure:
            _failed(cluster, endpoint, started, timed_out=isinstance(exc, UpstreamTimeout))
        raise
    if hold is not None and head is not None:
        # Only a try that succeeded hands its place to its stream (a failed one leaves it
        # to `call`, whatever becomes of its half-read generator).
        hold.stream = token
    elapsed_ms = (time.perf_counter() - started) * 1000
    endpoint.health.answered(elapsed_ms)
    endpoint.health.succeeded()
    limit = settings.max_response_bytes
    return Forwarded(
        response, data, endpoint, 1, elapsed_ms, head or b"", rest, limit=limit, where=where
    )


def _check_status(response: UpstreamResponse, where: str) -> None:
    status = response.status
    if status >= 500 or status == 429:
        response.abort()
        retry_after = backoff.retry_after_ms(response.headers.get("retry-after-ms"))
        if retry_after is None:
            retry_after = backoff.retry_after(response.headers.get("Retry-After"))
        should_retry = backoff.should_retry(response.headers.get("x-should-retry"))
        error = UpstreamStatus(f"{where}: answered {status}", status, retry_after, should_retry)
        error.chained_reasons = response.headers.get(CHAINED_REASONS, "")
        # A chained layer-router failing after its own retries and fallbacks: asking it
        # again would repeat them all, so tries multiply with each tier (3 x 3 reaching
        # central for one request). Only another endpoint of the cluster is tried (and the
        # next target of our decision).
        error.tried_behind = _tried_already(error.chained_reasons)
        if status in (502, 503) and error.chained_reasons:
            # A chained layer-router saying why it cannot serve this request (its own upstream
            # tier is offline or failing, it sheds load) is working: ejecting it would take
            # away what it serves itself. The tier at fault is ejected where it is seen.
            error.health_failure = False
            if OFFLINE in error.chained_reasons.replace(">", ",").split(","):
                # Its upstream tier is offline, as it found already: asking it again (after
                # its Retry-After) could only wait, where an offline answer must be fast.
                error.retryable = False
        raise error
    if 300 <= status < 400 and status != 304:  # 304 Not Modified points nowhere: relayed
        response.abort()
        error = UpstreamStatus(f"{where}: answered a redirect ({status}), not followed", status)
        error.retryable = False
        raise error


def _tried_already(chained_reasons: str) -> bool:
    """Whether a chained router's own reasons (before its upstream's, after `>`) name a target
    it tried and that failed."""
    own = chained_reasons.split(">", 1)[0]
    return any(reason.startswith(FAILED) for reason in own.split(","))


def _failed(cluster: Cluster, endpoint: Endpoint, started: float, timed_out: bool) -> None:
    loop_now = asyncio.get_running_loop().time()
    if timed_out:
        # A timeout is a lower bound on latency; remembering it keeps a slow tier skipped.
        endpoint.health.timed_out((time.perf_counter() - started) * 1000, loop_now)
    cluster.record_failure(endpoint, loop_now)
