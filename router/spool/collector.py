"""The central tier's end of store-and-forward: `POST /v1/spool/batches`.

Sites upload batches at least once, so the same record can arrive many times (a lost answer,
a crash between upload and acknowledgement). The collector keeps every key it has stored in
its own SQLite file and inserts a record only if its key is new for its site (keys are scoped
by uploader: see `_scoped`), in one committed transaction
per batch (WAL, synchronous=FULL); only then does it answer, listing every key of the batch
it holds. A key it lists is durable here, so the site may forget it; what arrives twice is
counted as a duplicate and stored once.

Each record keeps the site that uploaded it: the one whose key the collector checked (or, over
mTLS or on an open loopback collector, the site the batch names; None when it names none).

Keys are kept for as long as the records are, within a bound by age and size
(router.spool.retention): a key forgotten earlier than any site's spool TTL could let a late
resend in twice, so the byte bound drops the oldest payloads but keeps their keys until they
age out.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiohttp import web

from router.errors import RouterError, Unavailable
from router.spool import schema
from router.spool.collector_stats import CollectorStats
from router.spool.retention import DEFAULT_RETENTION, Retention, migrate, prune
from router.spool.sites import PeerCertificate, SiteGuard, check_record_sites
from router.spool.store import SpoolInUse, SpoolUnavailable
from router.spool.wire import Item, decode_batch
from router.spool.worker import Job, SqliteWorker, WorkerBusy, WorkerClosed

COLLECTOR_PATH = "/v1/spool/batches"

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS received (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    received REAL NOT NULL,
    site TEXT
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)
    WITHOUT ROWID;
INSERT OR IGNORE INTO counters (name, value) VALUES ('stored', 0), ('duplicates', 0);
"""


@dataclass(frozen=True)
class Added:
    accepted: list[str]  # every distinct key of the batch, in order: all are held now
    new: int
    duplicates: int
    removed: int = 0  # older records the retention removed in the same transaction


@dataclass(frozen=True)
class Received:
    id: int  # increasing: page with `read(after=last id seen)`
    item: Item
    received: float
    site: str | None = None  # who uploaded it (see the module's docstring)


class CollectorStore:
    """Received records, unique by key, on one SQLite file owned by one thread."""

    def __init__(
        self, worker: SqliteWorker, clock: Callable[[], float], retention: Retention
    ) -> None:
        self._worker = worker
        self._clock = clock
        self.retention = retention  # replaced on reload; read per batch

    @classmethod
    def _start(
        cls, path: Path, clock: Callable[[], float], shared: bool, retention: Retention
    ) -> CollectorStore:
        worker = SqliteWorker(f"collector:{path.name}", lambda: _connect(path, shared))
        return cls(worker, clock, retention)

    @classmethod
    def open_sync(
        cls,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        shared: bool = False,
        retention: Retention = DEFAULT_RETENTION,
    ) -> CollectorStore:
        store = cls._start(path, clock, shared, retention)
        try:
            store._worker.opened.result()
        except Exception as exc:
            raise _unavailable(path, exc) from None
        return store

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        shared: bool = False,
        retention: Retention = DEFAULT_RETENTION,
    ) -> CollectorStore:
        """`shared`: the site's workers all store into this file; a key stays unique across
        them (each batch is one transaction, INSERT OR IGNORE on the unique key)."""
        store = cls._start(path, clock, shared, retention)
        try:
            await asyncio.wrap_future(store._worker.opened)
        except Exception as exc:
            raise _unavailable(path, exc) from None
        return store

    async def add(self, items: Sequence[Item], site: str | None = None) -> Added:
        """Store the items whose keys are new, as uploaded by `site`; answers only after the
        commit."""
        job = self._add_job(items, site)
        return await asyncio.wrap_future(self._worker.submit(job, group=True))

    def add_sync(self, items: Sequence[Item], site: str | None = None) -> Added:
        return self._worker.submit(self._add_job(items, site), group=True).result()

    def _add_job(self, items: Sequence[Item], site: str | None) -> Job[Added]:
        now, retention = self._clock(), self.retention
        return lambda conn: _add(conn, items, now, site, retention)

    async def prune(self) -> int:
        """Apply the retention now, with no batch arriving (a collector whose sites went quiet
        must still forget what aged out); how many records it removed."""
        return await asyncio.wrap_future(self._worker.submit(self._prune_job(), group=True))

    def prune_sync(self) -> int:
        return self._worker.submit(self._prune_job(), group=True).result()

    def _prune_job(self) -> Job[int]:
        now, retention = self._clock(), self.retention
        return lambda conn: prune(conn, now, retention)

    async def read(self, after: int = 0, limit: int = 1000) -> list[Received]:
        """Stored records with ids above `after`, oldest first (those the retention removed
        or dropped the payload of are skipped)."""
        return await asyncio.wrap_future(self._worker.submit(lambda c: _read(c, after, limit)))

    def read_sync(self, after: int = 0, limit: int = 1000) -> list[Received]:
        return self._worker.submit(lambda conn: _read(conn, after, limit)).result()

    async def counts(self) -> dict[str, int]:
        """`stored` (distinct keys), `duplicates` (copies received again), `removed` (by the
        retention) and `held_bytes` (payload kept), persisted."""
        return await asyncio.wrap_future(self._worker.submit(schema.counters))

    def counts_sync(self) -> dict[str, int]:
        return self._worker.submit(schema.counters).result()

    async def close(self) -> None:
        self._worker.close()
        await asyncio.to_thread(self._worker.join)

    def close_sync(self) -> None:
        self._worker.close()
        self._worker.join()


def _unavailable(path: Path, exc: BaseException) -> SpoolUnavailable:
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED
        return SpoolInUse(f"collector store {path} is in use by another process")
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return SpoolUnavailable(f"cannot open collector store {path}: {reason}")


def _connect(path: Path, shared: bool) -> sqlite3.Connection:
    conn = schema.connect(path, _SCHEMA, shared=shared)
    try:
        # Files from before sites authenticated have no `site` column. One transaction, so
        # workers opening a shared file together add it once.
        conn.execute("BEGIN IMMEDIATE")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(received)")}
        if "site" not in columns:
            conn.execute("ALTER TABLE received ADD COLUMN site TEXT")
        migrate(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn


def _add(
    conn: sqlite3.Connection,
    items: Sequence[Item],
    now: float,
    site: str | None,
    retention: Retention,
) -> Added:
    accepted: dict[str, None] = {}
    new = held = 0
    for item in items:
        accepted[item.key] = None
        if site is not None and _held_unscoped(conn, item.key, site):
            continue  # stored by this site before keys were scoped: a resend
        cursor = conn.execute(
            "INSERT INTO received (key, kind, payload, created, expires, received, site)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
            (
                _scoped(item.key, site),
                item.kind,
                item.payload,
                item.created,
                item.expires,
                now,
                site,
            ),
        )
        new += cursor.rowcount
        held += len(item.payload) * cursor.rowcount
    duplicates = len(items) - new
    schema.bump(conn, stored=new, duplicates=duplicates, held_bytes=held)
    return Added(list(accepted), new, duplicates, prune(conn, now, retention))


def _read(conn: sqlite3.Connection, after: int, limit: int) -> list[Received]:
    rows = conn.execute(
        "SELECT id, key, kind, payload, created, expires, received, site FROM received"
        " WHERE id > ? AND dropped = 0 ORDER BY id LIMIT ?",
        (after, limit),
    )
    return [
        Received(rid, Item(_unscoped(key, site), kind, payload, created, expires), received, site)
        for rid, key, kind, payload, created, expires, received, site in rows
    ]


def _scoped(key: str, site: str | None) -> str:
    """A record's key as stored: in its uploader's own namespace. Keys are unique per site,
    not across sites; one shared namespace would let a site upload another's next key first
    (audit ids are in every answer's X-Audit-Id) and so have the real record dropped as a
    duplicate. Neither keys nor site ids hold a '/'."""
    return key if site is None else f"{site}/{key}"


def _held_unscoped(conn: sqlite3.Connection, key: str, site: str) -> bool:
    """Whether `site` uploaded `key` into a file from before keys were scoped by site."""
    row = conn.execute("SELECT 1 FROM received WHERE key = ? AND site = ?", (key, site))
    return row.fetchone() is not None


def _unscoped(stored: str, site: str | None) -> str:
    prefix = f"{site}/"
    return stored[len(prefix) :] if site is not None and stored.startswith(prefix) else stored


def collector_routes(
    store: CollectorStore,
    path: str = COLLECTOR_PATH,
    *,
    guard: SiteGuard | None = None,
    stats: CollectorStats | None = None,
) -> list[web.RouteDef]:
    """The collector's route, for `app.add_routes(...)` in an app with the error middleware
    (router.api.errors), which turns BatchError into 400 and Unavailable into 503. `guard`
    says who may upload (router.spool.sites); None: anyone, for a collector on loopback.
    `stats` counts what it takes and refuses."""
    sites = guard if guard is not None else SiteGuard()
    counted = stats if stats is not None else CollectorStats()

    async def receive(request: web.Request) -> web.Response:
        try:
            site, added = await take(request)
        except RouterError as exc:
            counted.refuse(exc.code)
            raise
        counted.taken(site, added.new, added.duplicates)
        counted.removed += added.removed
        body = {"accepted": added.accepted, "new": added.new, "duplicates": added.duplicates}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def take(request: web.Request) -> tuple[str | None, Added]:
        # Before the body is read: an upload nobody vouches for costs the collector nothing.
        certificate = PeerCertificate.of(request.get_extra_info("ssl_object"))
        site = sites.admit(request.headers, certificate=certificate)
        items = decode_batch(await request.read(), request.content_type)
        check_record_sites(items, site)
        try:
            return site, await store.add(items, site)
        except (sqlite3.Error, WorkerBusy, WorkerClosed) as exc:
            log.warning("collector could not store a batch: %s", type(exc).__name__)
            raise Unavailable("the collector cannot store batches right now", 5.0) from None

    return [web.post(path, receive)]
