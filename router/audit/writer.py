"""The audit log's writer thread: it syncs what the event loop already wrote (fsync `batch` and
`never` keep the disk off the request path), updates the head file, group-commits for fsync
`always`, and writes the records the loop could not (the log was busy on another thread).

The loop writes each record itself before the answer goes out (log.py), so a kill -9 cannot
lose a record whose id a client holds. This thread is only woken when the log turns dirty (one
`kick` per sync cycle, not one per record), by a flush, or by a record handed over.

Records handed over take places in a bounded queue: an asyncio.Semaphore on the caller's loop,
given back by the thread through `call_soon_threadsafe` once per batch, so a full queue
suspends the caller instead of blocking the loop. Each waits until its record is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from router.audit.record import AuditRecord

MAX_BATCH = 512  # records per write: bounds the writer's memory, not the queue

# Writes a batch (possibly empty: a sync fell due, or was asked for) and syncs, at once when
# `force`; returns an error message when the batch was lost or could not be synced.
WriteBatch = Callable[[list[AuditRecord], bool], str | None]
# Seconds until a batched sync falls due, or None when nothing waits for one.
SyncDue = Callable[[], float | None]
Done = Callable[[str | None], None]


@dataclass(slots=True)
class _Slots:
    """Queue places for one event loop."""

    loop: asyncio.AbstractEventLoop
    semaphore: asyncio.Semaphore

    def release(self, count: int) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(_release, self.semaphore, count)


@dataclass(slots=True)
class _Item:
    record: AuditRecord | None = None  # handed over: written by the thread
    slots: _Slots | None = None
    done: Done | None = None  # a record: told once written; a flush: once all before synced
    stop: bool = False


_KICK = _Item()  # the log turned dirty: a sync will fall due


class Writer:
    def __init__(self, write: WriteBatch, sync_due: SyncDue, max_queue: int) -> None:
        self._write = write
        self._sync_due = sync_due
        self._max_queue = max_queue
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._slots: _Slots | None = None
        self._error: str | None = None  # the last loss, until a flush reports it
        self._stopped = False  # a kick racing with the close starts no thread again

    async def submit(self, record: AuditRecord, is_open: Callable[[], bool]) -> bool:
        """Hand a record to the thread and wait until it is written (and, for fsync `always`,
        synced), waiting first while the queue is full; False when the log closed first."""
        loop = asyncio.get_running_loop()
        slots = self._slots_for(loop)
        await slots.semaphore.acquire()
        written: asyncio.Future[str | None] = loop.create_future()
        item = _Item(record=record, slots=slots, done=partial(_resolve, loop, written))
        # Under the lock `stop` takes: a record is either queued ahead of the thread's stop
        # (written before the close syncs and closes the file) or refused; never written by
        # its caller after the close, to a descriptor that may name another file by then.
        with self._start_lock:
            handed = is_open() and not self._stopped
            if handed:
                self._start_locked()
                self._queue.put(item)
        if not handed:
            slots.semaphore.release()
            return False
        await asyncio.shield(written)  # one caller leaving does not undo its record
        return True

    def kick(self) -> None:
        """The log turned dirty: wake the thread, which syncs when the policy says."""
        self._start()
        self._queue.put(_KICK)

    def note(self, error: str) -> None:
        """A record the loop wrote was lost: the next flush reports it."""
        self._error = error

    async def flush(self) -> str | None:
        """Wait until all written or handed over so far is synced; the last error since."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str | None] = loop.create_future()
        with self._start_lock:
            if self._stopped:  # no thread will take it: the stop wrote and synced all
                reported, self._error = self._error, None
                return reported
            self._start_locked()
            self._queue.put(_Item(done=partial(_resolve, loop, done)))
        return await done

    def stop(self) -> None:
        """Write everything handed over and end the thread (blocks until it has)."""
        with self._start_lock:
            self._stopped = True
        # Records and flushes are queued under that lock, before the thread's stop: it
        # handles them all (a kick racing with this is left, as there is nothing to write).
        if self._thread is not None:
            self._queue.put(_Item(stop=True))
            self._thread.join()

    def _slots_for(self, loop: asyncio.AbstractEventLoop) -> _Slots:
        if self._slots is None or self._slots.loop is not loop:
            self._slots = _Slots(loop, asyncio.Semaphore(self._max_queue))
        return self._slots

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            items = self._take()
            self._handle(items)
            if any(item.stop for item in items):
                return

    def _take(self) -> list[_Item]:
        """The next batch: all that is queued, or nothing when a batched sync falls due."""
        try:
            items = [self._queue.get(timeout=self._sync_due())]
        except queue.Empty:
            return []
        while len(items) < MAX_BATCH:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _handle(self, items: list[_Item]) -> None:
        records = [item.record for item in items if item.record is not None]
        flushed = (item.stop or (item.done is not None and item.record is None) for item in items)
        barrier = any(flushed)
        error = self._write(records, barrier)
        self._error = error or self._error
        self._notify(items, error)

    def _notify(self, items: list[_Item], error: str | None) -> None:
        written: Counter[int] = Counter()
        for item in items:
            if item.slots is not None:
                written[id(item.slots)] += 1
        for item in items:
            if item.slots is not None and id(item.slots) in written:
                item.slots.release(written.pop(id(item.slots)))
            if item.done is None:
                continue
            if item.record is not None:
                item.done(error)
            else:
                reported, self._error = self._error, None
                item.done(reported)


def _release(semaphore: asyncio.Semaphore, count: int) -> None:
    for _ in range(count):
        semaphore.release()


def _resolve(
    loop: asyncio.AbstractEventLoop, done: asyncio.Future[str | None], error: str | None
) -> None:
    def settle() -> None:
        if not done.done():
            done.set_result(error)

    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle)
