"""How long and how much the central collector keeps of what sites upload
(`spool.collector_retention_s`, `spool.collector_max_bytes`).

A record older than the retention is removed with its key: a resend of it could only come
from a site whose own spool keeps records longer than that (keep the retention above every
site's `spool.ttl_s`). Over the byte bound, the oldest records lose their payload first but
keep their key (a tombstone, `dropped = 1`) until they age out, so a late resend of one of
them is still a duplicate: de-duplication holds for every key within the retention.

Counted in the collector file's own counters, in the same transaction as the rows:
`removed` (records removed, once each: a tombstone aging out later is not counted again) and
`held_bytes` (the payload bytes kept). Every function here runs on the collector's worker
thread, inside the batch's transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

from router.spool import schema

if TYPE_CHECKING:
    from router.settings import SpoolSettings

# SpoolSettings' defaults (collector_retention_s, collector_max_bytes).
DEFAULT_RETENTION_S = 30 * 24 * 3600.0
DEFAULT_MAX_BYTES = 4 * 1024 * 1024 * 1024
# Oldest held records looked at per step while over the byte bound.
_STEP = 256


@dataclass(frozen=True, slots=True)
class Retention:
    max_age_s: float = DEFAULT_RETENTION_S
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def of(cls, spool: SpoolSettings) -> Retention:
        return cls(spool.collector_retention_s, spool.collector_max_bytes)


DEFAULT_RETENTION = Retention()


def migrate(conn: sqlite3.Connection) -> None:
    """What a file from before retention lacks: the tombstone column, the indexes pruning
    reads by, and the byte counter (summed once from the rows it holds)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(received)")}
    if "dropped" not in columns:
        conn.execute("ALTER TABLE received ADD COLUMN dropped INTEGER NOT NULL DEFAULT 0")
    conn.execute("CREATE INDEX IF NOT EXISTS received_at ON received (received)")
    conn.execute("CREATE INDEX IF NOT EXISTS received_held ON received (id) WHERE dropped = 0")
    conn.execute(
        "INSERT OR IGNORE INTO counters (name, value) VALUES ('removed', 0), ('held_bytes',"
        " (SELECT COALESCE(SUM(length(payload)), 0) FROM received WHERE dropped = 0))"
    )


def prune(conn: sqlite3.Connection, now: float, retention: Retention) -> int:
    """Remove what is past the retention, then the oldest payloads over the byte bound;
    the number of records removed."""
    aged, aged_bytes = _age_out(conn, now - retention.max_age_s)
    held = schema.counters(conn)["held_bytes"] - aged_bytes
    over = _over_bound(conn, held, retention.max_bytes)
    schema.bump(conn, removed=aged + len(over[0]), held_bytes=-(aged_bytes + over[1]))
    return aged + len(over[0])


def _age_out(conn: sqlite3.Connection, cutoff: float) -> tuple[int, int]:
    """Delete every row received before `cutoff`, tombstones too; how many records (not
    counted before as removed) and payload bytes that took."""
    count, size = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM received"
        " WHERE received < ? AND dropped = 0",
        (cutoff,),
    ).fetchone()
    conn.execute("DELETE FROM received WHERE received < ?", (cutoff,))
    return int(count), int(size)


def _over_bound(conn: sqlite3.Connection, held: int, max_bytes: int) -> tuple[list[int], int]:
    """Tombstone the oldest held records until at most `max_bytes` of payload stay; their
    ids and payload bytes."""
    taken: list[int] = []
    freed = 0
    after = 0
    while held - freed > max_bytes:
        rows = conn.execute(
            "SELECT id, length(payload) FROM received WHERE dropped = 0 AND id > ?"
            " ORDER BY id LIMIT ?",
            (after, _STEP),
        ).fetchall()
        if not rows:
            break
        for rid, size in rows:
            if held - freed <= max_bytes:
                break
            taken.append(rid)
            freed += size
        after = rows[-1][0]
    for part in schema.chunks(taken):
        conn.execute(
            f"UPDATE received SET dropped = 1, payload = x'' WHERE id IN ({schema.marks(part)})",
            part,
        )
    return taken, freed
