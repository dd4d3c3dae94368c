"""Run one model version off the event loop, with a bounded queue and dynamic batching.

Scheduling happens on the event loop (no locks: every queue operation is on one thread); only
`session.run` and the stacking/splitting of batches happen on the shared inference executor.
A job whose caller went away (its future was cancelled) or whose deadline passed is dropped
before it runs. Results come back with `call_soon_threadsafe`, the cheapest hand-off there is.
An idle model's short run may instead happen on the loop itself: its InlineGate decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.errors import (
    DeadlineExceeded,
    InvalidTensor,
    ModelNotReady,
    QueueFull,
    RouterError,
)
from router.inference.batch_rows import Unbatchable, split, stack
from router.inference.inline_gate import InlineGate, input_bytes
from router.inference.run_errors import run_error
from router.inference.run_watch import RunWatch
from router.inference.stats import ModelStats

Feeds = dict[str, np.ndarray]
_SINGLES_PER_HANDOFF = 16
# Grouping pays only where a run costs less than the hand-off; for longer runs the later jobs
# of a group would wait inside the thread, past the deadline and cancellation checks.
_GROUPED_RUN_MAX_NS = 1_000_000
Outputs = list[np.ndarray]
# A batching wait must end this long before the nearest deadline, less the run: timers fire
# late (to the millisecond on uvloop, several on a busy machine).
_TIMER_SLACK_S = 0.01


@dataclass(frozen=True, slots=True)
class RunnerLimits:
    max_batch_size: int  # 0: every request runs alone
    max_queue_delay_s: float
    max_queue_size: int
    instance_count: int
    # Runs measured shorter than this (ns) happen on the event loop itself when the model is
    # idle: a thread hand-off costs more than such a run (see README, "Inline runs"). 0: never.
    inline_max_ns: int = 0
    # Each hand-off's runs get onnxruntime RunOptions that the loop sets to terminate at the
    # latest deadline among its jobs: for models whose run time follows their inputs' values
    # (a Loop over an input count), which could otherwise hold a pool thread for hours.
    stop_at_deadline: bool = False


@dataclass(slots=True)
class _Job:
    feeds: Feeds
    rows: int
    key: tuple[Any, ...]  # jobs with equal keys can share a batch
    future: asyncio.Future[Outputs]
    deadline: float  # loop.time()
    enqueued_ns: int


@dataclass(slots=True)
class _Result:
    parts: list[Outputs] | None
    error: BaseException | None
    timings: tuple[int, int, int]  # stacking, session.run, splitting (ns)


class ModelRunner:
    def __init__(self, session: Any, executor: Executor, limits: RunnerLimits, label: str) -> None:
        self._session = session
        self._executor = executor
        self._limits = limits
        self._label = label
        self._queue: deque[_Job] = deque()
        self._queued_rows = 0
        self._busy = 0
        self._timer: asyncio.Handle | None = None
        self._passed = False  # a sub-millisecond wait already let one loop pass go by
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = ModelStats()
        # Asked, on the loop, where an idle model's run goes; told of every run and of every
        # shared hand-off. Its other thresholds are the README's ("Inline runs").
        self._gate = InlineGate(limits.inline_max_ns)

    @property
    def run_ns(self) -> float:
        """What a run on the loop is expected to take (ns); infinite until measured."""
        return self._gate.loop_run_ns()

    def measured(self, run_ns: float, feeds: Feeds) -> None:
        """Note one session.run duration, on `feeds`, measured where nothing else competed for
        the GIL (the warm-up, a run on the loop): the estimate that gates inline runs."""
        self._gate.ran_on_loop(run_ns, input_bytes(feeds))

    @property
    def inline_runs(self) -> bool:
        """Whether an idle model's short runs may happen on the event loop at all."""
        return self._limits.inline_max_ns > 0

    @property
    def batching(self) -> bool:
        return self._limits.max_batch_size > 0

    @property
    def pending(self) -> int:
        return len(self._queue) + self._busy

    def infer(self, feeds: Feeds, deadline: float) -> asyncio.Future[Outputs]:
        """Queue one request; the future holds the model's outputs in graph order."""
        if len(self._queue) >= self._limits.max_queue_size and not self._make_room():
            raise QueueFull(f"model {self._label}: queue is full", retry_after=1.0)
        loop = self._loop or self._bind_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        rows, key = self._batch_key(feeds)
        job = _Job(feeds, rows, key, future, deadline, time.perf_counter_ns())
        if self._busy == 0 and not self._queue and self._gate.runs_on_loop(loop, feeds):
            self.stats.queue.add(0)  # it went through the queue without waiting
            result = self._run_group([job])
            if result.parts is not None:
                self._gate.ran_on_loop(result.timings[1], input_bytes(feeds))
            self._settle([job], result, time.perf_counter_ns())
            return future
        self._queue.append(job)
        self._queued_rows += rows
        self._pump()
        return future

    def _make_room(self) -> bool:
        """Drop the queued jobs whose caller left or whose deadline passed: they would only be
        dropped when their turn came, and until then refuse live callers a place (a slow
        model's queue full of clients that timed out answered everyone 503). Whether there is
        room now."""
        loop = self._loop or self._bind_loop()
        now = loop.time()
        live: deque[_Job] = deque()
        for job in self._queue:
            if self._alive(job, now):
                live.append(job)
            else:
                self._queued_rows -= job.rows
        self._queue = live
        return len(live) < self._limits.max_queue_size

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _batch_key(self, feeds: Feeds) -> tuple[int, tuple[Any, ...]]:
        if not self.batching:
            return 1, ()
        first = next(iter(feeds.values()))
        rows = first.shape[0] if first.ndim else 1
        if rows > self._limits.max_batch_size:
            raise InvalidTensor(
                f"model {self._label}: batch of {rows} exceeds max_batch_size "
                f"{self._limits.max_batch_size}"
            )
        if any(a.shape[:1] != first.shape[:1] for a in feeds.values()):
            # Inputs that disagree on the batch dimension (a broadcast one-row input): stacked
            # with other requests their rows would pair up wrongly, so this one runs alone.
            return rows, (object(),)
        return rows, tuple((name, a.shape[1:], a.dtype) for name, a in feeds.items())

    def _pump(self) -> None:
        loop = self._loop
        assert loop is not None
        while self._queue and self._busy < self._limits.instance_count:
            if self._should_wait_for_more(loop):
                return
            now = loop.time()
            groups = self._take_batch(now) if self.batching else self._take_singles(now)
            if sum(map(len, groups)) > 1:
                self._gate.hand_off_shared(now)
            if groups:
                self._busy += 1
                watch = None
                if self._limits.stop_at_deadline:
                    last = max(job.deadline for group in groups for job in group)
                    watch = RunWatch.until(loop, last)
                self._executor.submit(self._execute, groups, watch)

    def _should_wait_for_more(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Hold a partial batch until the oldest job has waited max_queue_delay.

        Event loops time in milliseconds (uvloop rounds a 100 us timer to 0 and fires it at
        once, again and again), so a sub-millisecond remainder waits one loop pass instead:
        whatever arrived in that pass joins the batch."""
        if not self.batching or self._queued_rows >= self._limits.max_batch_size:
            return False
        due = self._queue[0].enqueued_ns / 1e9 + self._limits.max_queue_delay_s
        wait = due - time.perf_counter_ns() / 1e9
        if wait > 0 and self._slack(loop) < wait:
            # A budget shorter than the batching delay is not spent waiting for company: the
            # job would then be dropped as late, although the model was free to run it.
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._passed = False
            return False
        if self._timer is not None:
            return True
        if wait >= 0.001:
            self._timer = loop.call_later(wait, self._on_timer)
            return True
        if wait > 0 and not self._passed:
            self._timer = loop.call_soon(self._on_timer)
            return True
        self._passed = False
        return False

    def _slack(self, loop: asyncio.AbstractEventLoop) -> float:
        """How long the queued job with the nearest deadline can still wait and run in time
        (s), with a margin for a timer firing late."""
        expected_ns = self._gate.expected_run_ns()
        run_s = expected_ns / 1e9 if expected_ns < float("inf") else 0.0
        nearest = min(job.deadline for job in self._queue)
        return nearest - loop.time() - run_s - _TIMER_SLACK_S

    def _on_timer(self) -> None:
        self._timer = None
        self._passed = True
        self._pump()

    def _take_singles(self, now: float) -> list[list[_Job]]:
        """Unbatched models: several queued jobs per executor hand-off, run one by one, so a
        busy model pays one thread round trip per group of requests, not per request."""
        groups: list[list[_Job]] = []
        expected = self._gate.expected_run_ns()
        limit = _SINGLES_PER_HANDOFF if expected < _GROUPED_RUN_MAX_NS else 1
        while self._queue and len(groups) < limit:
            job = self._queue.popleft()
            self._queued_rows -= job.rows
            if self._alive(job, now):
                self.stats.queue.add(time.perf_counter_ns() - job.enqueued_ns)
                groups.append([job])
        return groups

    def _take_batch(self, now: float) -> list[list[_Job]]:
        """One stacked batch: jobs of the same shape, up to max_batch_size rows, oldest first."""
        batch: list[_Job] = []
        rows, skipped = 0, []
        limit = self._limits.max_batch_size
        while self._queue and rows < limit:
            job = self._queue.popleft()
            if not self._alive(job, now):
                self._queued_rows -= job.rows
                continue
            if batch and (job.key != batch[0].key or rows + job.rows > limit):
                skipped.append(job)
                continue
            batch.append(job)
            self.stats.queue.add(time.perf_counter_ns() - job.enqueued_ns)
            rows += job.rows
            self._queued_rows -= job.rows
        self._queue.extendleft(reversed(skipped))
        return [batch] if batch else []

    def _alive(self, job: _Job, now: float) -> bool:
        if job.future.done():  # the caller went away
            return False
        if now > job.deadline:
            job.future.set_exception(
                DeadlineExceeded(f"model {self._label}: deadline passed while queued")
            )
            return False
        return True

    def _execute(self, groups: list[list[_Job]], watch: RunWatch | None = None) -> None:
        """On an executor thread: per group stack, run, split; then one hand-off to the loop."""
        ran: list[list[_Job]] = []
        results: list[_Result] = []
        options = watch.options if watch is not None else None
        for group in groups:
            group = self._still_wanted(group, ran, results)
            if not group:
                continue
            result = self._run_group(group, options)
            if (
                len(group) > 1
                and result.parts is None
                and not isinstance(result.error, Unbatchable | RouterError)
            ):
                # One caller's input the model refuses (an index out of range) must not fail
                # the others it was stacked with: each runs alone, and only its own fails.
                for job in group:
                    ran.append([job])
                    results.append(self._run_group([job], options))
                continue
            ran.append(group)
            results.append(result)
        assert self._loop is not None
        # RuntimeError: the loop closed during shutdown, and nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._finish, ran, results, watch)

    def _still_wanted(
        self, group: list[_Job], ran: list[list[_Job]], results: list[_Result]
    ) -> list[_Job]:
        """On the executor thread, just before the run, the jobs still wanted. A hand-off can
        wait there behind other models' runs (the pool is shared; instance_count may exceed
        its threads) while its callers leave or run out of time; the late ones are noted in
        `ran` and `results`, to fail on the loop."""
        # The loop's clock is the monotonic one (asyncio's, and uvloop's to the millisecond);
        # uvloop's loop.time() would update the loop's own state from this thread.
        now = time.monotonic()
        wanted = []
        for job in group:
            if job.future.done():  # the caller went away (read only: set on the loop)
                continue
            if now > job.deadline:
                late = DeadlineExceeded(f"model {self._label}: deadline passed while queued")
                ran.append([job])
                results.append(_Result(None, late, (0, 0, 0)))
                continue
            wanted.append(job)
        return wanted

    def _run_group(self, batch: list[_Job], options: Any = None) -> _Result:
        t0 = time.perf_counter_ns()
        parts: list[Outputs] | None = None
        error: BaseException | None = None
        t1 = t2 = t0
        try:
            feeds = batch[0].feeds if len(batch) == 1 else stack([job.feeds for job in batch])
            t1 = time.perf_counter_ns()
            if options is None:
                outputs = self._session.run(None, feeds)
            else:
                outputs = self._session.run(None, feeds, options)
            t2 = time.perf_counter_ns()
            parts = [outputs] if len(batch) == 1 else split(outputs, [job.rows for job in batch])
        except Exception as exc:  # onnxruntime's errors have no common base we can name
            error = exc
            if options is not None and options.terminate:
                error = DeadlineExceeded(f"model {self._label}: deadline passed while running")
        return _Result(parts, error, (t1 - t0, t2 - t1, time.perf_counter_ns() - t2))

    def _finish(
        self, groups: list[list[_Job]], results: list[_Result], watch: RunWatch | None = None
    ) -> None:
        self._busy -= 1
        if watch is not None:
            watch.alarm.cancel()
        now_ns = time.perf_counter_ns()
        for batch, result in zip(groups, results, strict=True):
            if result.parts is not None:
                n = len(batch)
                self._gate.ran_in_pool(
                    result.timings[1] / n, sum(input_bytes(job.feeds) for job in batch) // n
                )
            self._settle(batch, result, now_ns)
        self._pump()

    def _settle(self, batch: list[_Job], result: _Result, now_ns: int) -> None:
        stats = self.stats
        if result.parts is not None:
            stats.record_execution(len(batch), sum(j.rows for j in batch), result.timings)
        for i, job in enumerate(batch):
            total = stats.success if result.parts is not None else stats.fail
            total.add(now_ns - job.enqueued_ns)
            if job.future.done():
                continue
            if result.parts is not None:
                job.future.set_result(result.parts[i])
            else:
                error = result.error
                if not isinstance(error, RouterError):
                    error = run_error(self._label, error, job.feeds)
                job.future.set_exception(error)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for job in self._queue:
            if not job.future.done():
                # Never run, through no fault of the request: a 503 the caller (or the next
                # target of the route) can retry, not a 500 (a reload's drain timeout passed
                # while a slow model's queue was long).
                job.future.set_exception(
                    ModelNotReady(f"model {self._label} was unloaded before the request ran")
                )
        self._queue.clear()
