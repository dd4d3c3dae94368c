"""The spool: a durable, bounded on-disk queue of records that must reach the central tier.

Durability guarantees
- `put` acknowledges a record (returns its key) only after the transaction holding it has
  committed, with SQLite in WAL mode and `synchronous=FULL`: the WAL is fsynced at every
  commit, so an acknowledged record survives kill -9 and, if the disk honours fsync, power
  loss. Concurrent appends share a commit (group commit), never a weaker guarantee.
- A crash at any instant leaves the file at its last commit (SQLite's atomic commit): no
  half-written record can be read back. Each record also carries a CRC-32 of key, kind and
  payload, checked before it is handed out: a record damaged at rest is deleted, counted as
  `corrupt` and never sent. A file failing `PRAGMA quick_check` on open is moved aside
  (`NAME.corrupt-TIME`, logged) and an empty spool started, so the site keeps serving.
- Counters are rows of the same file, changed in the same transactions as the records, so
  `produced == delivered + expired + dropped + corrupt + pending` holds exactly across
  crashes and restarts. `rejected` counts appends refused by the limits (never produced);
  `failed` (this process only, not persisted) counts appends that reached no commit: a storage
  error such as a full disk, or a hand-off queue already full. Neither raises: the caller
  keeps serving.
- A record leaves only when the collector acknowledged its key (`ack`: delivered), when its
  TTL passed before it was handed out (expired: never delivered), by the drop-oldest full
  policy (dropped), or as corrupt. Records handed out by `take_batch` are leased: expiry and
  the full policy leave them alone until `ack` or `release`, so each record is counted once.
  Leases end with the process: records in flight at a crash are sent again (at-least-once;
  the collector de-duplicates by key).
- Payloads are opaque bytes the caller has already desensitized (redacted with the central
  tier's rules): the spool never parses, logs or reports them.
- One process per file: SQLite's exclusive locking mode makes a second opener fail with
  SpoolUnavailable instead of sharing (and double-draining) the queue. Except `shared=True`,
  for a site's worker processes: normal locking with a busy timeout (transactions take
  turns, each as durable as above), and exactly one of them drains: only the drainer leases
  records, so only its opening (`drains=True`) frees the leases a crash left behind.

Every SQLite call runs on the spool's own thread (see worker.py); the async methods hand work
to it and the `*_sync` twins block, for scripts and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from router.spool import records, schema
from router.spool.records import KEY, KIND, FullPolicy, Limits, Record
from router.spool.worker import Job, SqliteWorker, WorkerBusy, WorkerClosed

T = TypeVar("T")

__all__ = [
    "Counts",
    "FullPolicy",
    "Limits",
    "Record",
    "Spool",
    "SpoolError",
    "SpoolInUse",
    "SpoolUnavailable",
]

log = logging.getLogger(__name__)


class SpoolError(Exception):
    """Base of the spool's own errors."""


class SpoolUnavailable(SpoolError):
    """The spool file cannot be opened (bad path, in use by another process, I/O error)."""


class SpoolInUse(SpoolUnavailable):
    """Another process holds the file (the only reason a caller may try another file)."""


@dataclass(frozen=True)
class Counts:
    produced: int
    delivered: int
    expired: int
    dropped: int
    rejected: int
    corrupt: int
    pending: int
    pending_bytes: int
    failed: int  # this process only

    @property
    def balanced(self) -> bool:
        """Every record produced is accounted for exactly once."""
        settled = self.delivered + self.expired + self.dropped + self.corrupt + self.pending
        return self.produced == settled


class Spool:
    """A durable queue on one SQLite file; open with `open()` or `open_sync()`."""

    def __init__(
        self, worker: SqliteWorker, path: Path, limits: Limits, clock: Callable[[], float]
    ) -> None:
        self.path = path
        self.limits = limits
        self._worker = worker
        self._clock = clock
        self._failed = 0
        self._failing = 0  # failures since the last stored append
        self._lock = threading.Lock()

    @classmethod
    def _start(
        cls,
        path: Path,
        limits: Limits,
        clock: Callable[[], float],
        shared: bool = False,
        drains: bool = True,
    ) -> Spool:
        script = schema.spool_schema(free_leases=drains)
        worker = SqliteWorker(
            f"spool:{path.name}", lambda: schema.connect(path, script, shared=shared)
        )
        return cls(worker, path, limits, clock)

    @classmethod
    def open_sync(
        cls,
        path: Path,
        limits: Limits | None = None,
        *,
        clock: Callable[[], float] = time.time,
        shared: bool = False,
        drains: bool = True,
    ) -> Spool:
        spool = cls._start(path, limits or Limits(), clock, shared, drains)
        try:
            spool._worker.opened.result()
        except Exception as exc:
            raise _unavailable(path, exc) from None
        return spool

    @classmethod
    async def open(
        cls,
        path: Path,
        limits: Limits | None = None,
        *,
        clock: Callable[[], float] = time.time,
        shared: bool = False,
        drains: bool = True,
    ) -> Spool:
        """`shared`: other processes (the site's workers) open the file too; `drains`: this
        one is the process that drains it (see the module's notes)."""
        spool = cls._start(path, limits or Limits(), clock, shared, drains)
        try:
            await asyncio.wrap_future(spool._worker.opened)
        except Exception as exc:
            raise _unavailable(path, exc) from None
        return spool

    def now(self) -> float:
        """The spool's clock (wall time by default: expiry must survive restarts)."""
        return self._clock()

    # -- appending -------------------------------------------------------------------------

    async def put(
        self, kind: str, payload: bytes, ttl_s: float | None = None, *, key: str | None = None
    ) -> str | None:
        """Append a record; its key once committed, None if it was not stored (counted)."""
        job = self._put_job(kind, payload, ttl_s, key)
        try:
            key = await asyncio.wrap_future(self._worker.submit(job, group=True))
        except (sqlite3.Error, WorkerBusy, WorkerClosed) as exc:
            self._failed_put(exc)
            return None
        self._stored_put()
        return key

    def put_sync(
        self, kind: str, payload: bytes, ttl_s: float | None = None, *, key: str | None = None
    ) -> str | None:
        job = self._put_job(kind, payload, ttl_s, key)
        try:
            key = self._worker.submit(job, group=True).result()
        except (sqlite3.Error, WorkerBusy, WorkerClosed) as exc:
            self._failed_put(exc)
            return None
        self._stored_put()
        return key

    def _put_job(
        self, kind: str, payload: bytes, ttl_s: float | None, key: str | None
    ) -> Job[str | None]:
        key = secrets.token_hex(16) if key is None else key
        ttl = self.limits.ttl_s if ttl_s is None else ttl_s
        if not KEY.fullmatch(key) or not KIND.fullmatch(kind):
            raise ValueError("spool keys and kinds are short names of letters, digits and ._:-")
        if not isinstance(payload, bytes) or not ttl > 0:
            raise ValueError("a spool record is bytes with a positive TTL")
        now, limits = self._clock(), self.limits
        return lambda conn: records.put(conn, key, kind, payload, now, now + ttl, limits)

    def _failed_put(self, exc: BaseException) -> None:
        with self._lock:
            self._failed += 1
            first, self._failing = not self._failing, self._failing + 1
        if first:  # once per outage, not once per append: a full disk must not flood the log
            # The type and SQLite's own message ("database or disk is full") never quote data.
            log.warning("spool appends failing: %s: %s", type(exc).__name__, exc)

    def _stored_put(self) -> None:
        if self._failing:  # unlocked peek: the common case costs nothing
            with self._lock:
                lost, self._failing = self._failing, 0
            if lost:
                log.warning("spool appends succeed again, after %d failed", lost)

    # -- draining --------------------------------------------------------------------------

    async def take_batch(self, n: int) -> list[Record]:
        """Lease up to `n` of the oldest live records, purging expired ones first."""
        return await self._run(self._take_job(n))

    def take_batch_sync(self, n: int) -> list[Record]:
        return self._run_sync(self._take_job(n))

    def _take_job(self, n: int) -> Job[list[Record]]:
        now = self._clock()
        return lambda conn: records.take(conn, n, now)

    async def ack(self, ids: Sequence[int]) -> int:
        """Delete leased records whose keys the collector acknowledged; how many were."""
        return await self._run(lambda conn: records.ack(conn, list(ids)))

    def ack_sync(self, ids: Sequence[int]) -> int:
        return self._run_sync(lambda conn: records.ack(conn, list(ids)))

    def release(self, ids: Sequence[int]) -> None:
        """Hand leased records back (not delivered). Never waits: jobs run in order, so a later
        `take_batch` sees them; on a closed spool it is moot (leases end with the process)."""
        if ids:
            freed = list(ids)
            with contextlib.suppress(WorkerBusy, WorkerClosed):
                self._worker.submit(lambda conn: schema.set_leased(conn, freed, 0))

    async def purge_expired(self) -> int:
        """Delete unleased records whose TTL has passed; how many there were."""
        return await self._run(self._purge_job())

    def purge_expired_sync(self) -> int:
        return self._run_sync(self._purge_job())

    def _purge_job(self) -> Job[int]:
        now = self._clock()
        return lambda conn: records.purge_expired(conn, now)

    # -- state -----------------------------------------------------------------------------

    async def counts(self) -> Counts:
        return self._counts(await self._run(schema.counters))

    async def oldest_created(self) -> float | None:
        """When the oldest waiting record was written (the spool's clock); None: empty."""
        return await self._run(schema.oldest_created)

    def counts_sync(self) -> Counts:
        return self._counts(self._run_sync(schema.counters))

    @property
    def failed(self) -> int:
        """Appends of this process that reached no commit (also in `counts()`)."""
        with self._lock:
            return self._failed

    def _counts(self, values: dict[str, int]) -> Counts:
        return Counts(**values, failed=self.failed)

    async def close(self) -> None:
        """Finish queued work, then close the file (SQLite checkpoints the WAL into it)."""
        self._worker.close()
        await asyncio.to_thread(self._worker.join)

    def close_sync(self) -> None:
        self._worker.close()
        self._worker.join()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_sync()

    async def _run(self, job: Job[T]) -> T:
        return await asyncio.wrap_future(self._submit(job))

    def _run_sync(self, job: Job[T]) -> T:
        return self._submit(job).result()

    def _submit(self, job: Job[T]) -> Future[T]:
        return self._worker.submit(job)


def _unavailable(path: Path, exc: BaseException) -> SpoolUnavailable:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED: another process holds the file
        return SpoolInUse(f"spool {path} is in use by another process")
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return SpoolUnavailable(f"cannot open spool {path}: {reason}")
