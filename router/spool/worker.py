"""One sqlite3 connection, owned by one thread, with group commit.

Every statement runs on the thread that opened the connection (sqlite3's own check enforces
it), so the event loop never waits on the disk. Jobs are functions of the connection; each runs
inside a transaction the thread opens and commits, and its future is resolved only after that
commit returned: a result a caller sees is durable to the degree the connection's
`synchronous` setting promises.

Group commit: jobs submitted with `group=True` that are queued together share one transaction
(each in its own savepoint, so one failing job does not undo the others) and one fsync. Under
concurrency that turns N fsyncs into one; alone a job costs the same as before.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]


class WorkerClosed(RuntimeError):
    """The worker was closed (or never opened): the job was not run."""


class WorkerBusy(RuntimeError):
    """Too many jobs are already waiting: the job was not queued."""


@dataclass(eq=False)
class _Task:
    fn: Callable[[sqlite3.Connection], Any]
    group: bool
    future: Future[Any] = field(default_factory=Future)


_STOP = _Task(fn=lambda conn: None, group=False)


class SqliteWorker:
    """A thread that opens a connection with `connect` and runs submitted jobs on it, in order."""

    def __init__(
        self,
        name: str,
        connect: Callable[[], sqlite3.Connection],
        *,
        max_group: int = 512,
        max_queued: int = 10_000,
    ) -> None:
        self._connect = connect
        self._max_group = max_group
        self._max_queued = max_queued
        self._tasks: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self.opened: Future[None] = Future()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Job[T], *, group: bool = False) -> Future[T]:
        """Queue `fn` to run in a transaction of its own (or one shared with other group jobs)."""
        task = _Task(fn=fn, group=group)
        with self._lock:
            if self._closed:
                raise WorkerClosed("the spool is closed")
            if self._tasks.qsize() >= self._max_queued:
                raise WorkerBusy("too many spool operations are waiting")
            self._tasks.put(task)
        return task.future

    def close(self) -> None:
        """Stop accepting jobs; those already queued still run, then the connection closes."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._tasks.put(_STOP)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            with self._lock:
                self._closed = True
            self.opened.set_exception(exc)
            self._fail_queued()
            return
        self.opened.set_result(None)
        try:
            self._serve(conn)
        finally:
            conn.close()

    def _serve(self, conn: sqlite3.Connection) -> None:
        held: _Task | None = None
        while True:
            task = held if held is not None else self._tasks.get()
            held = None
            if task is _STOP:
                return
            batch = [task]
            while task.group and len(batch) < self._max_group:
                try:
                    more = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP or not more.group:
                    held = more
                    break
                batch.append(more)
            _run(conn, batch)

    def _fail_queued(self) -> None:
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return
            if task is not _STOP and task.future.set_running_or_notify_cancel():
                task.future.set_exception(WorkerClosed("the spool could not be opened"))


def _run(conn: sqlite3.Connection, batch: list[_Task]) -> None:
    """Run the batch in one transaction; resolve futures only once COMMIT has returned."""
    live = [task for task in batch if task.future.set_running_or_notify_cancel()]
    if not live:
        return
    outcomes: list[tuple[_Task, Any, BaseException | None]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for task in live:
            conn.execute("SAVEPOINT job")
            try:
                value = task.fn(conn)
            except Exception as exc:
                # Disk-full and I/O errors can roll back the whole transaction by themselves:
                # then nothing of the batch is stored and every job must hear so.
                if not conn.in_transaction:
                    raise
                conn.execute("ROLLBACK TO job")
                outcomes.append((task, None, exc))
            else:
                outcomes.append((task, value, None))
            conn.execute("RELEASE job")
        conn.execute("COMMIT")
    except Exception as exc:
        _rollback(conn)
        for task in live:
            task.future.set_exception(exc)
        return
    for task, value, error in outcomes:
        if error is None:
            task.future.set_result(value)
        else:
            task.future.set_exception(error)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
