"""router/inference/runner.py: ModelRunner on real onnxruntime sessions and a real thread pool."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from _models import (
    add_model,
    column_sum_model,
    cpu_session,
    double_model,
    lookup_model,
    reshape_to_three_model,
)

from router.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidTensor,
    ModelNotReady,
    QueueFull,
)
from router.inference.runner import ModelRunner, RunnerLimits

FAR = 1e12  # a deadline that never passes (loop.time() is seconds since some boot)


class CountingSession:
    """A real session that records the shape of every feed it runs."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._lock = threading.Lock()
        self.runs: list[dict[str, tuple[int, ...]]] = []

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        with self._lock:
            self.runs.append({k: v.shape for k, v in feeds.items()})
        return self._session.run(names, feeds)


class RaisingSession:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        raise self.error


class SleepySession:
    """A real session whose every run takes at least `delay_s`: a slow model."""

    def __init__(self, session: Any, delay_s: float) -> None:
        self._session = session
        self._delay_s = delay_s

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        time.sleep(self._delay_s)
        return self._session.run(names, feeds)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-infer")
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
def session() -> CountingSession:
    return CountingSession(cpu_session(double_model()))


def _limits(
    max_batch_size: int = 0,
    delay_s: float = 0.0,
    queue: int = 64,
    instances: int = 1,
) -> RunnerLimits:
    return RunnerLimits(
        max_batch_size=max_batch_size,
        max_queue_delay_s=delay_s,
        max_queue_size=queue,
        instance_count=instances,
    )


def _rows(*values: float, width: int = 2) -> np.ndarray:
    return np.array([[v] * width for v in values], dtype=np.float32)


class TestModelRunner:
    async def test_single_request(self, session: CountingSession, executor: Any) -> None:
        """One request runs once and returns the model's outputs in graph order."""
        runner = ModelRunner(session, executor, _limits(), "double/1")
        (y,) = await runner.infer({"x": _rows(1.5, 2.0)}, FAR)
        np.testing.assert_array_equal(y, _rows(3.0, 4.0))
        assert len(session.runs) == 1
        assert runner.stats.execution_count == 1
        assert runner.stats.inference_count == 1  # batching off: a request counts once
        assert runner.stats.success.count == 1

    async def test_concurrent_requests_are_batched(
        self, session: CountingSession, executor: Any
    ) -> None:
        """Concurrent one-row requests share session runs and each gets its own row back."""
        runner = ModelRunner(session, executor, _limits(max_batch_size=8, delay_s=0.05), "d/1")
        futures = [runner.infer({"x": _rows(float(i))}, FAR) for i in range(20)]
        results = await asyncio.gather(*futures)
        for i, (y,) in enumerate(results):
            np.testing.assert_array_equal(y, _rows(2.0 * i))
        assert runner.stats.inference_count == 20
        assert runner.stats.execution_count < runner.stats.inference_count
        assert all(shapes["x"][0] <= 8 for shapes in session.runs)
        assert sum(shapes["x"][0] for shapes in session.runs) == 20
        assert max(runner.stats.batches) == 8

    async def test_batched_requests_each_count_the_whole_run(
        self, session: CountingSession, executor: Any
    ) -> None:
        """Triton's statistics: each request of a batch counts the batch's compute time (so
        ns / count is a request's wait on the model); batch_stats count the run once."""
        runner = ModelRunner(session, executor, _limits(max_batch_size=8, delay_s=0.05), "d/1")
        await asyncio.gather(*(runner.infer({"x": _rows(float(i))}, FAR) for i in range(3)))
        assert session.runs == [{"x": (3, 2)}]
        stats = runner.stats
        (run,) = stats.batches.values()
        assert stats.compute_infer.count == 3
        assert stats.compute_infer.ns == 3 * run.compute_infer.ns
        assert run.compute_infer.count == 1
        assert stats.busy_ns("infer") == run.compute_infer.ns

    async def test_multi_row_requests_split_back(
        self, session: CountingSession, executor: Any
    ) -> None:
        """Requests of several rows each get exactly their own rows from a shared batch."""
        runner = ModelRunner(session, executor, _limits(max_batch_size=8, delay_s=0.05), "d/1")
        a = runner.infer({"x": _rows(1, 2, 3)}, FAR)
        b = runner.infer({"x": _rows(4, 5)}, FAR)
        c = runner.infer({"x": _rows(6, 7, 8)}, FAR)
        (ya,), (yb,), (yc,) = await asyncio.gather(a, b, c)
        np.testing.assert_array_equal(ya, _rows(2, 4, 6))
        np.testing.assert_array_equal(yb, _rows(8, 10))
        np.testing.assert_array_equal(yc, _rows(12, 14, 16))
        assert session.runs == [{"x": (8, 2)}]

    async def test_different_shapes_never_share_a_batch(
        self, session: CountingSession, executor: Any
    ) -> None:
        """Requests whose non-batch dimensions differ run in separate batches."""
        runner = ModelRunner(session, executor, _limits(max_batch_size=8, delay_s=0.02), "d/1")
        futures = [
            runner.infer({"x": _rows(float(i), width=2 if i % 2 else 3)}, FAR) for i in range(10)
        ]
        results = await asyncio.gather(*futures)
        for i, (y,) in enumerate(results):
            np.testing.assert_array_equal(y, _rows(2.0 * i, width=2 if i % 2 else 3))
        widths = {shapes["x"][1] for shapes in session.runs}
        assert widths == {2, 3}
        assert len(session.runs) >= 2
        assert sum(shapes["x"][0] for shapes in session.runs) == 10

    async def test_inputs_of_unequal_rows_never_share_a_batch(self, executor: Any) -> None:
        """A request whose inputs disagree on the first dimension (a broadcast y) runs alone:
        stacked with others, its rows would pair with another request's rows."""
        session = CountingSession(cpu_session(add_model()))
        runner = ModelRunner(session, executor, _limits(max_batch_size=8, delay_s=0.05), "a/1")
        x = np.arange(9, dtype=np.float32).reshape(3, 3)
        one_y, two_y = np.ones((1, 3), np.float32), np.full((2, 3), 5, np.float32)
        feeds = [{"x": x[:2], "y": one_y}, {"x": x[2:], "y": x[2:]}, {"x": x[:1], "y": two_y}]
        results = await asyncio.gather(*(runner.infer(f, FAR) for f in feeds))
        for f, (z,) in zip(feeds, results, strict=True):
            np.testing.assert_array_equal(z, f["x"] + f["y"])

    async def test_output_without_the_batch_rows_fails_instead_of_mixing(
        self, executor: Any
    ) -> None:
        """An output whose open first dimension is not the batch cannot be split per request:
        every job of the batch fails, none gets a slice of another's result."""
        session = CountingSession(cpu_session(column_sum_model()))
        runner = ModelRunner(session, executor, _limits(max_batch_size=8, delay_s=0.05), "s/1")
        futures = [runner.infer({"x": _rows(float(i), width=3)}, FAR) for i in range(2)]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert len(session.runs) == 1  # they did share a batch
        for outcome in outcomes:
            assert isinstance(outcome, InferenceFailed)
            assert "cannot be batched" in outcome.message

    async def test_an_input_the_model_refuses_fails_only_its_own_request(
        self, executor: Any
    ) -> None:
        """A batch that fails on one caller's input (an index out of range) is run again one
        request at a time: the others get their rows, only that caller gets the error."""
        session = CountingSession(cpu_session(lookup_model()))
        runner = ModelRunner(session, executor, _limits(max_batch_size=8, delay_s=0.05), "l/1")
        futures = [runner.infer({"i": np.array([[k]], dtype=np.int64)}, FAR) for k in (0, 1, 9, 2)]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert session.runs[0] == {"i": (4, 1)}  # they did share a batch
        assert isinstance(outcomes[2], InvalidTensor)
        for k, outcome in zip((0, 1, 2), (outcomes[0], outcomes[1], outcomes[3]), strict=True):
            assert not isinstance(outcome, BaseException)
            np.testing.assert_array_equal(outcome[0], [[10.0 * (k + 1)]])
        assert runner.stats.success.count == 3
        assert runner.stats.fail.count == 1

    async def test_an_error_does_not_echo_the_request_values(self, executor: Any) -> None:
        """onnxruntime words an index out of range with its value: a number the request holds
        (a card number here) is masked in the error, the graph's own bounds stay."""
        session = cpu_session(lookup_model())
        runner = ModelRunner(session, executor, _limits(), "l/1")
        card = 4111111111111111
        with pytest.raises(InvalidTensor) as info:
            await runner.infer({"i": np.array([[card]], dtype=np.int64)}, FAR)
        assert str(card) not in info.value.message
        assert "out of data bounds" in info.value.message
        assert "[-4,3]" in info.value.message

    async def test_different_dtypes_never_share_a_batch(self, executor: Any) -> None:
        """Requests with different dtypes are not stacked, so numpy never upcasts one of them."""
        session = CountingSession(RecordingEcho())
        runner = ModelRunner(session, executor, _limits(max_batch_size=8, delay_s=0.02), "e/1")
        a = runner.infer({"x": _rows(1)}, FAR)
        b = runner.infer({"x": _rows(2).astype(np.float64)}, FAR)
        (ya,), (yb,) = await asyncio.gather(a, b)
        assert ya.dtype == np.float32
        assert yb.dtype == np.float64
        assert len(session.runs) == 2

    async def test_a_departed_caller_frees_its_place_in_a_full_queue(self, executor: Any) -> None:
        """A full queue whose waiting caller went away takes a new request instead of a 503,
        and the departed one never runs."""
        session = CountingSession(SleepySession(cpu_session(double_model()), 0.2))
        runner = ModelRunner(session, executor, _limits(queue=1), "d/1")
        running = runner.infer({"x": _rows(1)}, FAR)  # taken by the only instance
        departed = runner.infer({"x": _rows(2)}, FAR)  # waits: the instance is busy
        departed.cancel()
        (y,) = await runner.infer({"x": _rows(3)}, FAR)
        np.testing.assert_array_equal(y, _rows(6))
        await running
        assert [shapes["x"] for shapes in session.runs] == [(1, 2), (1, 2)]

    async def test_a_hand_off_waiting_for_a_thread_drops_departed_and_late_callers(
        self,
    ) -> None:
        """With more instances than inference threads (or other models' runs ahead in the
        shared pool) a hand-off waits for a thread: a caller that left meanwhile is not run,
        one whose deadline passed gets DeadlineExceeded without running."""
        session = CountingSession(SleepySession(cpu_session(double_model()), 0.3))
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-one-thread")
        try:
            runner = ModelRunner(session, pool, _limits(instances=3), "d/1")
            loop = asyncio.get_running_loop()
            running = runner.infer({"x": _rows(1)}, FAR)  # takes the only thread
            departed = runner.infer({"x": _rows(2)}, FAR)  # handed off, waits for it
            late = runner.infer({"x": _rows(3)}, loop.time() + 0.1)  # likewise
            departed.cancel()
            outcomes = await asyncio.gather(running, late, return_exceptions=True)
            assert isinstance(outcomes[1], DeadlineExceeded)
            assert len(session.runs) == 1
        finally:
            pool.shutdown(wait=True)

    async def test_queue_full(self, session: CountingSession, executor: Any) -> None:
        """Past max_queue_size a request is refused with QueueFull and a Retry-After."""
        runner = ModelRunner(session, executor, _limits(queue=1), "d/1")
        running = runner.infer({"x": _rows(1)}, FAR)  # taken by the only instance
        queued = runner.infer({"x": _rows(2)}, FAR)  # waits: the instance is busy
        with pytest.raises(QueueFull) as info:
            runner.infer({"x": _rows(3)}, FAR)
        assert info.value.retry_after is not None
        assert info.value.retry_after > 0
        assert info.value.status == 503
        await asyncio.gather(running, queued)
        assert len(session.runs) == 2

    async def test_cancelled_job_is_skipped(self, session: CountingSession, executor: Any) -> None:
        """A queued job whose caller went away is dropped without running."""
        runner = ModelRunner(session, executor, _limits(), "d/1")
        running = runner.infer({"x": _rows(1)}, FAR)
        abandoned = runner.infer({"x": _rows(2)}, FAR)
        after = runner.infer({"x": _rows(3)}, FAR)
        abandoned.cancel()
        await asyncio.gather(running, after)
        assert [run["x"] for run in session.runs] == [(1, 2), (1, 2)]
        assert runner.pending == 0

    async def test_slow_model_checks_each_job_when_it_starts(self, executor: Any) -> None:
        """Jobs queued behind a slow model are handed over one at a time, so one whose caller
        left (or whose deadline passed) while an earlier one ran never runs."""
        session = CountingSession(SleepySession(cpu_session(double_model()), 0.05))
        runner = ModelRunner(session, executor, _limits(), "slow/1")
        runner.measured(50e6, {"x": _rows(1.0)})  # a run takes 50 ms
        running = runner.infer({"x": _rows(1)}, FAR)
        second = runner.infer({"x": _rows(2)}, FAR)
        abandoned = runner.infer({"x": _rows(3)}, FAR)
        await running  # the next hand-off was made as it finished
        abandoned.cancel()
        await second
        await asyncio.sleep(0.1)  # time enough for a third run, were one coming
        assert len(session.runs) == 2
        assert runner.pending == 0

    async def test_slow_in_the_pool_checks_each_job_though_its_warm_up_was_fast(
        self, executor: Any
    ) -> None:
        """A model fast at its warm-up (open dimensions set to 1) but slow on the inputs it
        is sent, never run on the loop (inline runs off, or requests arriving together), is
        handed over one job at a time once its runs in the pool show it slow."""
        session = CountingSession(SleepySession(cpu_session(double_model()), 0.05))
        runner = ModelRunner(session, executor, _limits(), "slow/1")
        runner.measured(3_000, {"x": _rows(1.0)})  # the warm-up: 3 µs
        running = runner.infer({"x": _rows(1)}, FAR)
        second = runner.infer({"x": _rows(2)}, FAR)
        abandoned = runner.infer({"x": _rows(3)}, FAR)
        await running  # measured 50 ms in the pool; the next hand-off made as it finished
        abandoned.cancel()
        await second
        await asyncio.sleep(0.1)  # time enough for a third run, were one coming
        assert len(session.runs) == 2

    async def test_cancelled_job_is_skipped_when_batching(
        self, session: CountingSession, executor: Any
    ) -> None:
        """A cancelled job waiting for a batch to fill is left out of the batch."""
        runner = ModelRunner(session, executor, _limits(max_batch_size=8, delay_s=0.02), "d/1")
        kept = runner.infer({"x": _rows(1)}, FAR)
        abandoned = runner.infer({"x": _rows(2, 3)}, FAR)
        abandoned.cancel()
        (y,) = await kept
        np.testing.assert_array_equal(y, _rows(2))
        assert session.runs == [{"x": (1, 2)}]

    async def test_deadline_passed_fails_without_running(
        self, session: CountingSession, executor: Any
    ) -> None:
        """A job whose deadline has passed fails with DeadlineExceeded and never runs."""
        runner = ModelRunner(session, executor, _limits(), "d/1")
        past = asyncio.get_running_loop().time() - 1.0
        with pytest.raises(DeadlineExceeded):
            await runner.infer({"x": _rows(1)}, past)
        assert session.runs == []

    async def test_deadline_passes_while_queued(
        self, session: CountingSession, executor: Any
    ) -> None:
        """A job that expires behind a busy instance is dropped, and the next one still runs."""
        runner = ModelRunner(session, executor, _limits(), "d/1")
        loop = asyncio.get_running_loop()
        running = runner.infer({"x": _rows(1)}, FAR)
        expired = runner.infer({"x": _rows(2)}, loop.time() - 1.0)
        later = runner.infer({"x": _rows(3)}, FAR)
        results = await asyncio.gather(running, expired, later, return_exceptions=True)
        assert isinstance(results[1], DeadlineExceeded)
        assert [run["x"] for run in session.runs] == [(1, 2), (1, 2)]

    async def test_a_budget_shorter_than_the_batching_delay_is_not_spent_waiting(
        self, session: CountingSession, executor: Any
    ) -> None:
        """A lone request whose deadline comes before the batching delay ends runs in time on
        the idle model, rather than waiting out the delay to be dropped as late."""
        runner = ModelRunner(session, executor, _limits(max_batch_size=8, delay_s=5.0), "d/1")
        deadline = asyncio.get_running_loop().time() + 1.0
        (y,) = await asyncio.wait_for(runner.infer({"x": _rows(1)}, deadline), 3.0)
        np.testing.assert_array_equal(y, _rows(2))
        assert session.runs == [{"x": (1, 2)}]
        # Nor when it joins a job that has no hurry and is waiting for company: both run.
        relaxed = runner.infer({"x": _rows(2)}, FAR)
        await asyncio.sleep(0.05)
        deadline = asyncio.get_running_loop().time() + 1.0
        urgent = runner.infer({"x": _rows(3)}, deadline)
        results = await asyncio.wait_for(asyncio.gather(relaxed, urgent), 3.0)
        np.testing.assert_array_equal(results[1][0], _rows(6))
        assert session.runs[1:] == [{"x": (2, 2)}]

    async def test_invalid_argument_maps_to_invalid_tensor(
        self, session: CountingSession, executor: Any
    ) -> None:
        """onnxruntime's InvalidArgument (a wrong dtype here) becomes InvalidTensor."""
        runner = ModelRunner(session, executor, _limits(), "d/1")
        with pytest.raises(InvalidTensor, match="model d/1 rejected the input"):
            await runner.infer({"x": _rows(1).astype(np.float64)}, FAR)
        assert runner.stats.fail.count == 1
        assert runner.stats.execution_count == 0

    async def test_runtime_failure_maps_to_inference_failed(self, executor: Any) -> None:
        """An onnxruntime failure while running becomes InferenceFailed with its first line."""
        runner = ModelRunner(cpu_session(reshape_to_three_model()), executor, _limits(), "r/1")
        with pytest.raises(InferenceFailed) as info:
            await runner.infer({"x": np.ones(2, np.float32)}, FAR)
        message = str(info.value)
        assert message.startswith("model r/1 failed to run:")
        assert "\n" not in message
        # The runner still works after a failure.
        (y,) = await runner.infer({"x": np.ones(3, np.float32)}, FAR)
        assert y.shape == (3,)

    async def test_failure_in_a_batch_fails_every_job(self, executor: Any) -> None:
        """When a batched run fails, each request in it gets the error."""
        runner = ModelRunner(
            RaisingSession(RuntimeError("device lost\ndetails")),
            executor,
            _limits(max_batch_size=4, delay_s=0.02),
            "f/1",
        )
        futures = [runner.infer({"x": _rows(float(i))}, FAR) for i in range(4)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(r, InferenceFailed) for r in results)
        assert all(str(r) == "model f/1 failed to run: device lost" for r in results)
        assert runner.stats.fail.count == 4

    async def test_error_without_message(self, executor: Any) -> None:
        """A session error with an empty message still fails the request with InferenceFailed."""
        loop = asyncio.get_running_loop()
        crashed = loop.create_future()
        loop.set_exception_handler(lambda _loop, context: crashed.set_result(context))
        try:
            runner = ModelRunner(RaisingSession(RuntimeError()), executor, _limits(), "f/1")
            future = runner.infer({"x": _rows(1)}, FAR)
            await asyncio.wait({future, crashed}, return_when=asyncio.FIRST_COMPLETED)
            assert future.done(), "the callback crashed and the request was never answered"
            assert isinstance(future.exception(), InferenceFailed)
        finally:
            loop.set_exception_handler(None)
            crashed.cancel()

    async def test_too_many_rows(self, session: CountingSession, executor: Any) -> None:
        """A request with more rows than max_batch_size is refused before it is queued."""
        runner = ModelRunner(session, executor, _limits(max_batch_size=4), "d/1")
        with pytest.raises(InvalidTensor, match="exceeds max_batch_size 4"):
            runner.infer({"x": _rows(*range(5))}, FAR)
        assert runner.pending == 0
        assert session.runs == []

    async def test_rows_unlimited_without_batching(
        self, session: CountingSession, executor: Any
    ) -> None:
        """With batching off a request may carry any number of rows."""
        runner = ModelRunner(session, executor, _limits(), "d/1")
        (y,) = await runner.infer({"x": _rows(*range(100))}, FAR)
        assert y.shape == (100, 2)

    async def test_close_fails_pending_jobs(self, session: CountingSession, executor: Any) -> None:
        """close() fails every queued job with a 503 to retry (the model was unloaded, by a
        reload whose drain timeout passed), not a 500: the request itself was never run."""
        runner = ModelRunner(session, executor, _limits(max_batch_size=8, delay_s=60.0), "d/1")
        futures = [runner.infer({"x": _rows(float(i))}, FAR) for i in range(3)]
        runner.close()
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            assert isinstance(result, ModelNotReady)
            assert result.status == 503
            assert result.retry_after is not None
        assert session.runs == []

    async def test_instances_run_side_by_side(self, executor: Any) -> None:
        """With two instances, two jobs are handed to the executor before either finishes."""
        gate = threading.Barrier(2, timeout=30)
        session = CountingSession(BarrierEcho(gate))
        runner = ModelRunner(session, executor, _limits(instances=2), "b/1")
        a = runner.infer({"x": _rows(1)}, FAR)
        b = runner.infer({"x": _rows(2)}, FAR)
        (ya,), (yb,) = await asyncio.gather(a, b)  # deadlocks if only one ran at a time
        np.testing.assert_array_equal(ya, _rows(1))
        np.testing.assert_array_equal(yb, _rows(2))


class RecordingEcho:
    """Returns its input unchanged, whatever the dtype."""

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [feeds["x"]]


class BarrierEcho(RecordingEcho):
    """Echo that waits until a second run has started too."""

    def __init__(self, gate: threading.Barrier) -> None:
        self._gate = gate

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self._gate.wait()
        return super().run(names, feeds)


class ThreadRecordingSession(CountingSession):
    """A real session that also records which thread ran it."""

    def __init__(self, session: Any) -> None:
        super().__init__(session)
        self.threads: list[int] = []

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        self.threads.append(threading.get_ident())
        return super().run(names, feeds)


class TestInlineRuns:
    """The runner asks its InlineGate where an idle model's run goes and tells it of every run
    (tests/unit/test_inline_gate.py holds the gate's decisions, under a fake clock)."""

    def _runner(self, executor: Any, inline_max_ns: int) -> tuple[ModelRunner, Any]:
        session = ThreadRecordingSession(cpu_session(double_model()))
        limits = RunnerLimits(0, 0.0, 64, 1, inline_max_ns=inline_max_ns)
        return ModelRunner(session, executor, limits, "double/1"), session

    async def test_fast_measured_model_runs_inline(self, executor: Any) -> None:
        """Once measured below the threshold, an idle model runs on the loop's own thread."""
        runner, session = self._runner(executor, inline_max_ns=10**9)
        await runner.infer({"x": _rows(1.0)}, FAR)
        (y,) = await runner.infer({"x": _rows(2.0)}, FAR)
        np.testing.assert_array_equal(y, _rows(4.0))
        assert session.threads[-1] == threading.get_ident()

    async def test_inline_runs_count_as_queued(self, executor: Any) -> None:
        """An inline run passed through the queue in no time: Triton's queue count stays the
        number of requests served, as for runs on the executor."""
        runner, session = self._runner(executor, inline_max_ns=10**9)
        for value in (1.0, 2.0, 3.0):
            await runner.infer({"x": _rows(value)}, FAR)
        assert session.threads[-1] == threading.get_ident()  # the later ones ran inline
        assert runner.stats.queue.count == runner.stats.success.count == 3

    async def test_disabled_by_zero(self, executor: Any) -> None:
        """inline_max_ns=0 never runs inline, however fast the model: not after the first
        run (always one to the pool, to look) either."""
        runner, session = self._runner(executor, inline_max_ns=0)
        runner.measured(1, {"x": _rows(1.0)})
        for value in (1.0, 2.0, 3.0):
            await runner.infer({"x": _rows(value)}, FAR)
        assert len(session.threads) == 3
        assert threading.get_ident() not in session.threads

    async def test_model_sent_off_by_a_spike_is_probed_back_onto_the_loop(
        self, executor: Any
    ) -> None:
        """One very slow run (a first run on a new thread) sends the model to the pool; a
        probe on the loop, due since the runner told the gate of its fast run in the pool,
        brings it back, and the runner tells the gate what the probe measured."""
        runner, session = self._runner(executor, inline_max_ns=1_000_000)
        await runner.infer({"x": _rows(1.0)}, FAR)  # to the pool: its run there is measured
        runner.measured(50_000_000, {"x": _rows(1.0)})  # a 50 ms run on the loop
        assert runner.run_ns >= 1_000_000
        await runner.infer({"x": _rows(2.0)}, FAR)
        assert session.threads[-1] == threading.get_ident()
        assert runner.run_ns < 1_000_000  # the probe measured the model again

    async def test_input_far_larger_than_measured_runs_in_the_pool(self, executor: Any) -> None:
        """A model measured fast on small inputs (the warm-up sets open dimensions to 1) runs an
        input a hundred thousand times larger in the pool: on the loop it would stall it."""
        runner, session = self._runner(executor, inline_max_ns=1_000_000)
        await runner.infer({"x": _rows(1.0)}, FAR)  # the first run goes to the pool, to look
        await runner.infer({"x": _rows(2.0)}, FAR)  # probed on the loop: measured there
        assert session.threads[-1] == threading.get_ident()
        (y,) = await runner.infer({"x": np.ones((100_000, 2), np.float32)}, FAR)
        assert session.threads[-1] != threading.get_ident()
        assert y.shape == (100_000, 2)

    async def test_requests_arriving_together_keep_a_fast_model_in_the_pool(
        self, executor: Any
    ) -> None:
        """Once requests shared a hand-off, a fast model's runs stay in the pool, where queued
        runs share hand-offs, instead of going one by one on the loop."""
        runner, session = self._runner(executor, inline_max_ns=1_000_000)
        runner.measured(10_000, {"x": _rows(1.0)})
        await asyncio.gather(*(runner.infer({"x": _rows(v)}, FAR) for v in range(5)))
        await runner.infer({"x": _rows(9.0)}, FAR)
        assert session.threads[-1] != threading.get_ident()
