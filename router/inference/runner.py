"""Run one model version off the event loop, with a bounded queue and dynamic batching.

Scheduling happens on the event loop (no locks: every queue operation is on one thread); only
`session.run` and the stacking/splitting of batches happen on the shared inference executor.
A job whose caller went away (its future was cancelled) or whose deadline passed is dropped
before it runs. Results come back with `call_soon_threadsafe`, the cheapest hand-off there is.
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

from router.errors import DeadlineExceeded, InferenceFailed, InvalidTensor, QueueFull
from router.inference.stats import ModelStats

Feeds = dict[str, np.ndarray]
Outputs = list[np.ndarray]


@dataclass(frozen=True, slots=True)
class RunnerLimits:
    max_batch_size: int  # 0: every request runs alone
    max_queue_delay_s: float
    max_queue_size: int
    instance_count: int


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
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = ModelStats()

    @property
    def batching(self) -> bool:
        return self._limits.max_batch_size > 0

    @property
    def pending(self) -> int:
        return len(self._queue) + self._busy

    def infer(self, feeds: Feeds, deadline: float) -> asyncio.Future[Outputs]:
        """Queue one request; the future holds the model's outputs in graph order."""
        if len(self._queue) >= self._limits.max_queue_size:
            raise QueueFull(f"model {self._label}: queue is full", retry_after=1.0)
        loop = self._loop or self._bind_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        rows, key = self._batch_key(feeds)
        self._queue.append(_Job(feeds, rows, key, future, deadline, time.perf_counter_ns()))
        self._queued_rows += rows
        self._pump()
        return future

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
        return rows, tuple((name, a.shape[1:], a.dtype) for name, a in feeds.items())

    def _pump(self) -> None:
        loop = self._loop
        assert loop is not None
        while self._queue and self._busy < self._limits.instance_count:
            if self._should_wait_for_more(loop):
                return
            batch = self._take_batch(loop.time())
            if batch:
                self._busy += 1
                self._executor.submit(self._execute, batch)

    def _should_wait_for_more(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Hold a partial batch until the oldest job has waited max_queue_delay."""
        if not self.batching or self._queued_rows >= self._limits.max_batch_size:
            return False
        due = self._queue[0].enqueued_ns / 1e9 + self._limits.max_queue_delay_s
        wait = due - time.perf_counter_ns() / 1e9
        if wait <= 0:
            return False
        if self._timer is None:
            self._timer = loop.call_later(wait, self._on_timer)
        return True

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _take_batch(self, now: float) -> list[_Job]:
        batch: list[_Job] = []
        rows, skipped = 0, deque[_Job]()
        while self._queue:
            job = self._queue.popleft()
            if not self._alive(job, now):
                self._queued_rows -= job.rows
                continue
            if batch and (job.key != batch[0].key or rows + job.rows > self._limits.max_batch_size):
                skipped.append(job)
                if not self.batching:
                    break
                continue
            batch.append(job)
            self.stats.queue.add(time.perf_counter_ns() - job.enqueued_ns)
            rows += job.rows
            self._queued_rows -= job.rows
            if not self.batching or rows >= self._limits.max_batch_size:
                break
        skipped.extend(self._queue)
        self._queue = skipped
        return batch

    def _alive(self, job: _Job, now: float) -> bool:
        if job.future.done():  # the caller went away
            return False
        if now > job.deadline:
            job.future.set_exception(
                DeadlineExceeded(f"model {self._label}: deadline passed while queued")
            )
            return False
        return True

    def _execute(self, batch: list[_Job]) -> None:
        """On an executor thread: stack, run, split; then hand the result to the loop."""
        t0 = time.perf_counter_ns()
        parts: list[Outputs] | None = None
        error: BaseException | None = None
        t1 = t2 = t0
        try:
            feeds = batch[0].feeds if len(batch) == 1 else _stack(batch)
            t1 = time.perf_counter_ns()
            outputs = self._session.run(None, feeds)
            t2 = time.perf_counter_ns()
            parts = [outputs] if len(batch) == 1 else _split(outputs, batch)
        except Exception as exc:  # onnxruntime's errors have no common base we can name
            error = exc
        result = _Result(parts, error, (t1 - t0, t2 - t1, time.perf_counter_ns() - t2))
        assert self._loop is not None
        # RuntimeError: the loop closed during shutdown, and nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._finish, batch, result)

    def _finish(self, batch: list[_Job], result: _Result) -> None:
        self._busy -= 1
        now_ns = time.perf_counter_ns()
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
                job.future.set_exception(self._map_error(result.error))
        self._pump()

    def _map_error(self, error: BaseException | None) -> Exception:
        lines = str(error).strip().splitlines() if error is not None else []
        reason = lines[0][:300] if lines else type(error).__name__
        if type(error).__name__ == "InvalidArgument":
            return InvalidTensor(f"model {self._label} rejected the input: {reason}")
        return InferenceFailed(f"model {self._label} failed to run: {reason}")

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(InferenceFailed(f"model {self._label} was unloaded"))
        self._queue.clear()


def _stack(batch: list[_Job]) -> Feeds:
    names = batch[0].feeds.keys()
    return {name: np.concatenate([job.feeds[name] for job in batch]) for name in names}


def _split(outputs: Outputs, batch: list[_Job]) -> list[Outputs]:
    parts, start = [], 0
    for job in batch:
        end = start + job.rows
        parts.append([out[start:end] for out in outputs])
        start = end
    return parts
