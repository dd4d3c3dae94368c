"""The records table and the operations on it. Every function taking a connection runs on the
spool's worker thread, inside a transaction, and changes the counters in that same
transaction (see store.py for the guarantees this gives)."""

from __future__ import annotations

import logging
import re
import sqlite3
import zlib
from dataclasses import dataclass
from typing import Literal

from router.spool import schema

FullPolicy = Literal["drop-oldest", "reject-new"]

log = logging.getLogger(__name__)

KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")
KIND = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Bytes a record costs beyond its payload, key and kind: row header, numbers, index entries.
RECORD_OVERHEAD = 64


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 256 * 1024 * 1024  # payload + key + kind + RECORD_OVERHEAD, summed
    max_records: int = 1_000_000
    ttl_s: float = 7 * 24 * 3600.0  # for puts that name none
    on_full: FullPolicy = "drop-oldest"


@dataclass(frozen=True)
class Record:
    id: int
    key: str  # the idempotency key the collector de-duplicates by
    kind: str
    payload: bytes
    created: float
    expires: float
    attempts: int  # times handed out, this one included


def record_size(key: str, kind: str, payload: bytes) -> int:
    return len(payload) + len(key) + len(kind) + RECORD_OVERHEAD


def checksum(key: str, kind: str, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(f"{key}\0{kind}".encode()))


def put(
    conn: sqlite3.Connection,
    key: str,
    kind: str,
    payload: bytes,
    created: float,
    expires: float,
    limits: Limits,
) -> str | None:
    if conn.execute("SELECT 1 FROM records WHERE key = ?", (key,)).fetchone():
        return key  # already queued: appending is idempotent per key
    size = record_size(key, kind, payload)
    if size > limits.max_bytes or not _make_room(conn, size, created, limits):
        schema.bump(conn, rejected=1)
        return None
    conn.execute(
        "INSERT INTO records (key, kind, payload, created, expires, size, crc)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (key, kind, payload, created, expires, size, checksum(key, kind, payload)),
    )
    schema.bump(conn, produced=1, pending=1, pending_bytes=size)
    return key


def _fits(values: dict[str, int], size: int, limits: Limits) -> bool:
    return (
        values["pending"] + 1 <= limits.max_records
        and values["pending_bytes"] + size <= limits.max_bytes
    )


def _make_room(conn: sqlite3.Connection, size: int, now: float, limits: Limits) -> bool:
    """Whether a record of `size` fits, after purging expired records and, under drop-oldest,
    dropping the oldest unleased ones."""
    if _fits(schema.counters(conn), size, limits):
        return True
    purge_expired(conn, now)
    values = schema.counters(conn)
    if _fits(values, size, limits):
        return True
    if limits.on_full == "reject-new":
        return False
    need_records = values["pending"] + 1 - limits.max_records
    need_bytes = values["pending_bytes"] + size - limits.max_bytes
    count = freed = 0
    cutoff = None
    cursor = conn.execute("SELECT id, size FROM records WHERE leased = 0 ORDER BY id")
    for record_id, record_bytes in cursor:
        if count >= need_records and freed >= need_bytes:
            break
        count, freed, cutoff = count + 1, freed + record_bytes, record_id
    cursor.close()
    if cutoff is None or count < need_records or freed < need_bytes:
        return False  # what is left is leased (in flight): it cannot be dropped
    conn.execute("DELETE FROM records WHERE leased = 0 AND id <= ?", (cutoff,))
    schema.bump(conn, dropped=count, pending=-count, pending_bytes=-freed)
    return True


def purge_expired(conn: sqlite3.Connection, now: float) -> int:
    where = "expires <= ? AND leased = 0"
    count, size = conn.execute(
        f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE {where}", (now,)
    ).fetchone()
    if count:
        conn.execute(f"DELETE FROM records WHERE {where}", (now,))
        schema.bump(conn, expired=count, pending=-count, pending_bytes=-size)
    return int(count)


def take(conn: sqlite3.Connection, n: int, now: float) -> list[Record]:
    purge_expired(conn, now)
    rows = conn.execute(
        "SELECT id, key, kind, payload, created, expires, attempts, crc FROM records"
        " WHERE leased = 0 AND expires > ? ORDER BY id LIMIT ?",
        (now, n),
    ).fetchall()
    good: list[Record] = []
    bad: list[int] = []
    for rid, key, kind, payload, created, expires, attempts, crc in rows:
        if _intact(key, kind, payload, crc):
            good.append(Record(rid, key, kind, payload, created, expires, attempts + 1))
        else:
            bad.append(rid)
    if bad:
        count, size = schema.remove(conn, bad, leased=0)
        schema.bump(conn, corrupt=count, pending=-count, pending_bytes=-size)
        log.error("spool: %d damaged record(s) discarded", count)
    schema.set_leased(conn, [record.id for record in good], 1)
    return good


def _intact(key: object, kind: object, payload: object, crc: object) -> bool:
    if not (isinstance(key, str) and isinstance(kind, str) and isinstance(payload, bytes)):
        return False
    return checksum(key, kind, payload) == crc


def ack(conn: sqlite3.Connection, ids: list[int]) -> int:
    count, size = schema.remove(conn, ids, leased=1)
    schema.bump(conn, delivered=count, pending=-count, pending_bytes=-size)
    return count
