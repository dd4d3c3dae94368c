"""The append-only audit log: one hash chain in one file, written by one process.

Requests write their record with `append` (async) before their answer goes out: on the event
loop it seals the record into the chain and writes its line with one `os.write` (a few
microseconds to the page cache, which a kill -9 does not lose), so no client holds an audit id
whose record is not in the file. Syncing follows the fsync policy: `always` (`append` waits for
a group-commit fsync by the writer thread, writer.py), `batch` (the thread syncs at most
`batch_interval_ms` after a write) or `never` (the OS decides). After each sync the head file
records the newest entry synced (the thread writes it; under `never` at most once an
interval). When another thread holds the log, or the writer thread syncs it (a write to a file
being synced can wait in the kernel), `append` hands the record to the writer thread through a
bounded queue and waits until it is written, rather than block the loop.
A failed write is counted, logged once per outage, and reported by the next `flush`: the
answer still goes out. `append_sync` writes on the calling thread, for tests and tools.
`close` (or `aclose`) writes what is still queued and syncs.

One chain per process: the file is locked (flock) while open, and a second writer, in this
process or another, is refused. A site with several workers gives each its own file.

On open the chain continues from the last intact line, found from the end of the file. Bytes
after it (a write torn by a crash) are kept, closed with a newline, and described by a
`segment` entry (their offset, length and SHA-256) chained to the last intact entry; so are
entries the head file knew but the log lost (fsync `never` and a power cut). Cutting the torn
bytes away would destroy evidence and appending after them would break every later link; a
recorded break keeps both the bytes and a chain that verifies, and the verifier reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

from router.audit.chain import (
    AuditLogError,
    AuditLogHeld,
    BadEntry,
    Entry,
    Head,
    read_head,
    seal,
    write_head,
)
from router.audit.record import AuditRecord, id_time, new_audit_id
from router.audit.tail import Resume, resume
from router.audit.writer import Writer

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "batch", "never"]


def log_file(path: Path, site: str, worker: int = 0) -> Path:
    """The settings' `audit.path` as a file: a `.jsonl` path is one; any other is a folder
    holding `<site>.jsonl` (worker N > 0: `<site>.N.jsonl`), one chain per worker."""
    if path.suffix == ".jsonl":
        return path
    return path / (f"{site}.jsonl" if worker == 0 else f"{site}.{worker}.jsonl")


class AuditLog:
    def __init__(
        self,
        path: Path,
        *,
        fsync: FsyncPolicy = "batch",
        batch_interval_ms: float = 100.0,
        max_queue: int = 1024,
    ) -> None:
        if fsync not in ("always", "batch", "never"):
            raise ValueError(f"unknown fsync policy {fsync!r}")
        self.path = path
        self.failures = 0  # records lost to write errors
        self._failing = False  # writes fail: logged once per outage, not once per batch
        self._losing = 0  # records lost in this outage
        self._fsync = fsync
        self._interval = batch_interval_ms / 1000
        self._lock = threading.Lock()  # the chain state and the file; never held over a sync
        self._sync_lock = threading.Lock()  # one sync (and head write) at a time
        # fsync 'always': per loop, the future a group commit settles and the records it covers
        self._commits: dict[asyncio.AbstractEventLoop, tuple[asyncio.Future[None], int]] = {}
        self._writer = Writer(self._write_batch, self._sync_due, max_queue)
        self._closed = self._broken = self._dirty = False
        self._syncing = False  # an fsync runs: a write now could wait in the kernel for it
        self._last_sync = time.monotonic()
        self._fd = _open_locked(path)
        try:
            self._resume()
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def head(self) -> Head | None:
        """The newest entry written (synced or not)."""
        with self._lock:
            return self._head()

    async def append(self, record: AuditRecord) -> Entry:
        """Write a record into the file (and, under fsync 'always', wait until it is synced);
        a lost write is counted and logged, not raised: serving goes on without the disk.
        Returns the record as written (before sealing), for copies made of it."""
        body = record.to_dict()
        # While another thread writes or closes the log, or syncs it (a write to a file being
        # synced can wait milliseconds in the kernel, stalling every request on the loop), the
        # writer thread writes the record once it is free, and only this request waits.
        if self._syncing or not self._lock.acquire(blocking=False):
            if not await self._writer.submit(record, lambda: not self._closed):
                raise AuditLogError(f"the audit log {self.path} is closed")
            return body
        try:
            self._check_open()
            # One wake-up of the writer thread per sync cycle, not one per record.
            kick = not self._dirty
            error = self._write_bodies([body])
            commit = None
            if error is None and self._fsync == "always":
                commit, kick = self._commit_for()
        finally:
            self._lock.release()
        if error is not None:
            self._writer.note(error)
        elif kick:
            self._writer.kick()
        if commit is not None:
            await asyncio.shield(commit)  # a caller that leaves does not fail the group
        return body

    async def flush(self) -> None:
        """Wait until every record written or handed over so far is synced (unless fsync is
        'never'); AuditLogError if a write failed since the last flush."""
        self._check_open()
        error = await self._writer.flush()
        if error is not None:
            raise AuditLogError(error)

    def append_sync(self, record: AuditRecord) -> None:
        """Write a record on the calling thread (tests, tools); syncs by the policy."""
        with self._lock:
            self._check_open()
            self._append([record.to_dict()])
        self._sync(force=False)

    def close(self) -> None:
        """Write what is queued, sync, and release the file. Blocks: on a loop use `aclose`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._writer.stop()
        try:
            self._sync(force=True)
        finally:
            with self._lock:
                os.close(self._fd)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- resuming an existing log ------------------------------------------------------------

    def _resume(self) -> None:
        found = resume(self._fd)
        self._seq, self._prev, self._last_id = found.seq, found.prev, found.last_id
        self._size = found.size
        head = self._old_head()
        lost = head if head is not None and head.seq >= found.seq else None
        if found.torn or lost is not None:
            self._mark_segment(found, lost)

    def _old_head(self) -> Head | None:
        try:
            return read_head(self.path)
        except (BadEntry, OSError) as exc:
            log.warning("audit log %s: ignoring its head file: %s", self.path, exc)
            return None

    def _mark_segment(self, found: Resume, lost: Head | None) -> None:
        torn = os.pread(self._fd, found.torn, found.end)
        if torn and not torn.endswith(b"\n"):
            self._write(b"\n")
            torn += b"\n"
        marker = new_audit_id()
        body: Entry = {"kind": "segment", "id": marker, "time": id_time(marker)}
        body["torn"] = None
        if torn:
            digest = hashlib.sha256(torn).hexdigest()
            body["torn"] = {"offset": found.end, "bytes": len(torn), "sha256": digest}
        body["lost"] = None
        if lost is not None:
            body["lost"] = {"head_seq": lost.seq, "head_id": lost.id, "head_hash": lost.hash}
        self._append([body])
        self._sync(force=True)
        log.warning(
            "audit log %s: %d torn bytes at offset %d, %s entries lost; new segment from entry %d",
            self.path,
            found.torn,
            found.end,
            lost.seq - found.seq + 1 if lost else 0,
            found.seq,
        )

    # -- writing -----------------------------------------------------------------------------

    def _write_batch(self, records: list[AuditRecord], force: bool) -> str | None:
        """For the writer thread: write what was handed over, then sync by the policy; the
        error message when records were lost or could not be synced."""
        bodies = [record.to_dict() for record in records]
        error = None
        if bodies:
            with self._lock:
                error = self._write_bodies(bodies)
        try:
            self._sync(force=force)
        except AuditLogError as exc:
            error = error or str(exc)
        return error

    def _write_bodies(self, bodies: list[Entry]) -> str | None:
        """Append under the lock; a failure is counted, logged once per outage, and returned."""
        try:
            self._append(bodies)
        except AuditLogError as exc:
            self._lost(len(bodies), exc)
            return str(exc)
        if self._failing:
            log.warning(
                "audit log %s: writes succeed again, after %d records lost",
                self.path,
                self._losing,
            )
            self._failing, self._losing = False, 0
        return None

    def _lost(self, count: int, exc: AuditLogError) -> None:
        self.failures += count
        self._losing += count
        if not self._failing:  # a full disk must not fill the log with a line a batch
            self._failing = True
            log.error("%s; records are lost until writes succeed again", exc)

    def _commit_for(self) -> tuple[asyncio.Future[None], bool]:
        """The future the next group commit settles for this loop (under the lock), and
        whether it is new (the writer thread is then to be woken for it)."""
        loop = asyncio.get_running_loop()
        commit = self._commits.get(loop)
        if commit is None:
            future = loop.create_future()
            self._commits[loop] = (future, 1)
            return future, True
        self._commits[loop] = (commit[0], commit[1] + 1)
        return commit[0], False

    def _append(self, bodies: list[Entry]) -> None:
        """Seal and write entries; the chain only moves on once the bytes are in the file."""
        lines = []
        seq, prev = self._seq, self._prev
        for body in bodies:
            line, prev = seal(body, seq, prev)
            lines.append(line)
            seq += 1
        self._write(b"".join(lines))
        self._seq, self._prev, self._last_id = seq, prev, bodies[-1]["id"]
        self._dirty = True

    def _write(self, data: bytes) -> None:
        if self._broken:
            raise AuditLogError(f"the audit log {self.path} was left damaged by a failed write")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._roll_back()
            raise AuditLogError(f"cannot write the audit log {self.path}: {exc.strerror}") from None
        self._size += len(data)

    def _roll_back(self) -> None:
        """Cut a partly written batch off, so the next entry still follows an intact one."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self._broken = True

    def _sync_due(self) -> float | None:
        if self._fsync == "always" or not self._dirty:
            return None  # 'always' syncs when kicked; a clean log waits for a kick
        return max(0.0, self._last_sync + self._interval - time.monotonic())

    def _sync(self, *, force: bool) -> None:
        """Sync what is written (by the policy, or at once when `force`), then write the head.
        The write lock is only held to take the state: the loop writes on during an fsync."""
        with self._sync_lock:
            with self._lock:
                now = time.monotonic()
                due = force or self._fsync == "always" or now - self._last_sync >= self._interval
                if not self._dirty or not due:
                    return
                # Also after a failure: retry at the next interval, not at once.
                self._last_sync = now
                self._dirty = False
                head = self._head()
                commits, self._commits = self._commits, {}
                self._syncing = self._fsync != "never"
            try:
                try:
                    if self._fsync != "never":
                        os.fsync(self._fd)
                except OSError as exc:
                    error = AuditLogError(f"cannot sync the audit log {self.path}: {exc.strerror}")
                    with self._lock:
                        self._dirty = True
                        self._lost(sum(count for _, count in commits.values()), error)
                    raise error from None
                finally:
                    _settle(commits)
                self._write_head(head)  # synced too: the same journal commit a write would wait on
            finally:
                self._syncing = False

    def _head(self) -> Head | None:
        if self._prev is None or self._last_id is None:
            return None
        return Head(self._seq - 1, self._prev, self._last_id)

    def _write_head(self, head: Head | None) -> None:
        if head is None:
            return
        try:
            # Synced as the log is: a head that outlived its entries is the point of it.
            write_head(self.path, head, sync=self._fsync != "never")
        except OSError as exc:
            log.warning("audit log %s: cannot write its head file: %s", self.path, exc.strerror)

    def _check_open(self) -> None:
        if self._closed:
            raise AuditLogError(f"the audit log {self.path} is closed")


def _settle(commits: dict[asyncio.AbstractEventLoop, tuple[asyncio.Future[None], int]]) -> None:
    """Wake the callers a group commit covered (synced or not: a failure is counted)."""
    for loop, (future, _) in commits.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_done, future)


def _done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _open_locked(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise AuditLogError(f"cannot open the audit log {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AuditLogHeld(
            f"the audit log {path} is held by another writer: give each worker its own file"
        ) from None
    return fd
