"""The spool's SQLite file: opening it safely, its tables, and the statements that keep the
counters exact. Every function here runs on the spool's worker thread, inside a transaction.

Counters live in the same database as the records and change in the same transaction as the
rows they count, so after any crash both are at the same commit.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

COUNTERS = (
    "produced",
    "delivered",
    "expired",
    "dropped",
    "rejected",
    "corrupt",
    "pending",
    "pending_bytes",
)

_RECORDS = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    leased INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS records_expires ON records (expires);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)
    WITHOUT ROWID;
"""

# SQLite's result codes for a damaged file (the low byte of an extended code).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
# Ids per `IN (...)`: well below SQLite's smallest variable limit (999 before 3.32).
_CHUNK = 500


# How long a process sharing the file waits for another's transaction (they take milliseconds).
SHARED_BUSY_S = 10.0
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


# The layout of the files this code writes, kept in SQLite's `user_version`. 0 is a file from
# before the number was kept: the same layout. A higher one was written by a later release (a
# site rolled back to this one): its tables may take rows this code cannot write, so every
# record would be lost one by one; it stops start-up instead, and the file stays as it is.
LAYOUT_VERSION = 1
FILE_MODE = 0o640  # a new file's mode (before the umask), as the audit log's


class CorruptDatabase(sqlite3.DatabaseError):
    """`PRAGMA quick_check` found damage."""


class NewerLayout(sqlite3.DatabaseError):
    """The file was written by a later release (its user_version is above LAYOUT_VERSION)."""


def connect(
    path: Path, schema: str, *, wal_limit_bytes: int = 8 * 1024 * 1024, shared: bool = False
) -> sqlite3.Connection:
    """Open `path` for this process alone, in WAL mode with an fsync at every commit, and
    create `schema`. A damaged file is moved aside and a fresh one started, so a site never
    stops serving because its spool was hurt; the event is logged with both paths.

    `shared`: several processes of one site (workers) open the file together: normal locking
    with a busy timeout, so their transactions take turns. A damaged shared file is not moved
    (another process may hold it open): the error stops start-up instead."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if shared:
        return _open_shared(path, schema, wal_limit_bytes)
    try:
        return _open(path, schema, wal_limit_bytes, shared)
    except sqlite3.DatabaseError as exc:
        if not _is_corruption(exc):
            raise
    moved = _aside(path)
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{moved}{suffix}")
    log.error("spool database %s failed its integrity check; moved to %s", path, moved)
    return _open(path, schema, wal_limit_bytes, shared)


def _open_shared(path: Path, schema: str, wal_limit_bytes: int) -> sqlite3.Connection:
    """Workers starting together race to create the file and switch it to WAL; SQLite answers
    that race with SQLITE_BUSY at once (its busy handler does not cover a journal-mode change),
    so the opening is tried again for up to SHARED_BUSY_S. Runs on the spool's own thread."""
    give_up = time.monotonic() + SHARED_BUSY_S
    while True:
        try:
            return _open(path, schema, wal_limit_bytes, shared=True)
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
            if not busy or time.monotonic() > give_up:
                raise
        time.sleep(0.05)


def _aside(path: Path) -> Path:
    """A free name next to `path` for a damaged file (never one that already holds another)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for attempt in range(1000):
        moved = path.with_name(f"{path.name}.corrupt-{stamp}{f'-{attempt}' if attempt else ''}")
        if not any(Path(f"{moved}{suffix}").exists() for suffix in ("", "-wal", "-shm")):
            return moved
    raise FileExistsError(f"no free name to move {path} aside")


def _open(path: Path, schema: str, wal_limit_bytes: int, shared: bool) -> sqlite3.Connection:
    # What these files hold (redacted samples, copies of audit records, other sites' uploads)
    # is for the site's operators, like the audit log: SQLite would create the file with the
    # umask's mode (often world-readable) and gives its -wal and -shm files the file's mode.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
    # isolation_level=None: the worker issues BEGIN/COMMIT itself; timeout: a second process
    # on an exclusive file fails fast; on a shared one, waits its turn (SQLite's busy timeout).
    conn = sqlite3.connect(path, isolation_level=None, timeout=SHARED_BUSY_S if shared else 0.05)
    try:
        if not shared:
            # Exclusive before WAL: the WAL index then lives in this process's memory (no
            # -shm file), and the lock taken by the first write keeps other processes out.
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA journal_size_limit = {int(wal_limit_bytes)}")
        verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise CorruptDatabase("quick_check failed")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > LAYOUT_VERSION:
            raise NewerLayout(
                f"its layout (version {version}) is newer than this release's "
                f"({LAYOUT_VERSION}): run the release that wrote it, or move the file aside"
            )
        conn.executescript(
            f"BEGIN IMMEDIATE; {schema} PRAGMA user_version = {LAYOUT_VERSION}; COMMIT;"
        )
    except BaseException:
        conn.close()
        raise
    return conn


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    if isinstance(exc, CorruptDatabase):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def spool_schema(*, free_leases: bool = True) -> str:
    """`free_leases`: only for the one process that leases (drains); another process's start
    must not free the records that one has in flight."""
    rows = ", ".join(f"('{name}', 0)" for name in COUNTERS)
    # Leases belong to the process that took them: after a restart every record is free.
    free = " UPDATE records SET leased = 0 WHERE leased = 1;" if free_leases else ""
    return f"{_RECORDS} INSERT OR IGNORE INTO counters (name, value) VALUES {rows};{free}"


def counters(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT name, value FROM counters").fetchall())


def oldest_created(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT created FROM records ORDER BY id LIMIT 1").fetchone()
    return float(row[0]) if row else None


def bump(conn: sqlite3.Connection, **deltas: int) -> None:
    conn.executemany(
        "UPDATE counters SET value = value + ? WHERE name = ?",
        [(delta, name) for name, delta in deltas.items() if delta],
    )


def chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def marks(ids: Sequence[int]) -> str:
    return ",".join("?" * len(ids))


def remove(conn: sqlite3.Connection, ids: Sequence[int], *, leased: int) -> tuple[int, int]:
    """Delete the records among `ids` whose lease flag is `leased`: (how many, their bytes)."""
    count = size = 0
    for part in chunks(ids):
        where = f"id IN ({marks(part)}) AND leased = ?"
        found, total = conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE {where}", (*part, leased)
        ).fetchone()
        conn.execute(f"DELETE FROM records WHERE {where}", (*part, leased))
        count, size = count + found, size + total
    return count, size


def set_leased(conn: sqlite3.Connection, ids: Sequence[int], leased: int) -> None:
    for part in chunks(ids):
        bump_attempts = ", attempts = attempts + 1" if leased else ""
        conn.execute(
            f"UPDATE records SET leased = ?{bump_attempts} WHERE id IN ({marks(part)})",
            (leased, *part),
        )
