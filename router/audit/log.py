"""The append-only audit log: one hash chain in one file, written by one process.

Requests hand records to `append` (async), which only waits when the bounded queue is full; a
single writer thread (writer.py) seals them into the chain, writes each batch with one `write`,
and syncs by the fsync policy: `always` (each batch is synced before anyone is told it was
written: group commit), `batch` (at most `batch_interval_ms` after a write) or `never` (the OS
decides). After each sync the head file records the newest entry. `append_sync` writes on the
calling thread, for tests and tools. `close` (or `aclose`) writes what is still queued: the
writer is a daemon thread, and records queued at an exit without it are lost.

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
        self._lock = threading.Lock()  # the chain state and the file
        self._writer = Writer(self._write_batch, self._sync_due, max_queue)
        self._closed = self._broken = self._dirty = False
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

    async def append(self, record: AuditRecord) -> None:
        """Queue a record for the writer thread; waits only while the queue is full."""
        if not await self._writer.submit(record, lambda: not self._closed):
            raise AuditLogError(f"the audit log {self.path} is closed")

    async def flush(self) -> None:
        """Wait until every record queued so far is written and synced (unless fsync is
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
        if self._closed:
            return
        self._closed = True
        self._writer.stop()
        with self._lock:
            try:
                self._sync(force=True)
            finally:
                os.close(self._fd)

    async def aclose(self) -> None:
        self._writer.hand_off()  # on the loop, where lingering records wait
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
        """For the writer thread: append and sync; the error message when the batch is lost."""
        bodies = [record.to_dict() for record in records]
        with self._lock:
            try:
                if bodies:
                    self._append(bodies)
                self._sync(force=force)
            except AuditLogError as exc:
                self.failures += len(bodies)
                self._losing += len(bodies)
                if not self._failing:  # a full disk must not fill the log with a line a batch
                    self._failing = True
                    log.error("%s; records are lost until writes succeed again", exc)
                return str(exc)
            if bodies and self._failing:
                log.warning(
                    "audit log %s: writes succeed again, after %d records lost",
                    self.path,
                    self._losing,
                )
                self._failing, self._losing = False, 0
        return None

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
        if self._fsync != "batch" or not self._dirty:
            return None
        return max(0.0, self._last_sync + self._interval - time.monotonic())

    def _sync(self, *, force: bool) -> None:
        if not self._dirty:
            return
        now = time.monotonic()
        if self._fsync == "batch" and not force and now - self._last_sync < self._interval:
            return
        self._last_sync = now  # also after a failure: retry at the next interval, not at once
        if self._fsync != "never":
            try:
                os.fsync(self._fd)
            except OSError as exc:
                message = f"cannot sync the audit log {self.path}: {exc.strerror}"
                raise AuditLogError(message) from None
        self._dirty = False
        self._write_head()

    def _head(self) -> Head | None:
        if self._prev is None or self._last_id is None:
            return None
        return Head(self._seq - 1, self._prev, self._last_id)

    def _write_head(self) -> None:
        head = self._head()
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
