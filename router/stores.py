"""The site's durable stores, each a startup/cleanup pair for `app.cleanup_ctx`: the spool
with its drainer, the central tier's collector store and endpoint, and the audit log."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from router.api.state import (
    CACHE,
    COLLECTOR,
    COLLECTOR_STATS,
    COLLECTOR_STORE,
    RELOADER,
    RUNTIME,
    SETTINGS,
    SPOOL,
    TLS,
    TRAIL,
    UPSTREAMS,
)
from router.audit import AuditLog, AuditLogError, AuditLogHeld, log_file
from router.audit.tail import mark_copied, recent_records, take_copied_mark
from router.errors import ConfigError, RouteNotFound
from router.resources import audit_path, state_dir
from router.settings import Settings, is_loopback
from router.spool import Drainer, Spool, SpoolUnavailable, http_sender, limits_of
from router.spool.collector import COLLECTOR_PATH, CollectorStore, collector_routes
from router.spool.collector_stats import CollectorStats
from router.spool.retention import Retention
from router.spool.sites import SITE_HEADER, SiteGuard, read_key_file, sent_in_clear
from router.spool.store import SpoolInUse
from router.spool.worker import WorkerBusy, WorkerClosed
from router.store_forward import StoreAndForward
from router.tasks import cancel_all
from router.trail import Trail
from router.upstreams.client import plain_session, poster
from router.workers import is_primary

logger = logging.getLogger(__name__)

# How far back, before the newest record of the previous run, audit copies are made again at
# start-up: copies are committed to the spool within milliseconds of their records (seconds
# under the heaviest load); a copy made twice costs one duplicate upload, de-duplicated.
RECOPY_WINDOW_S = 2.0


async def spool_context(app: web.Application) -> AsyncIterator[None]:
    """The site's spool and its drainer (when a collector is configured), and the collector
    endpoint itself on the central tier."""
    settings = app[SETTINGS]
    spool_settings = settings.spool
    spool: Spool | None = None
    drains = is_primary()
    # Before anything is opened: a bad key file stops start-up with nothing to clean up.
    headers = await _upload_headers(settings) if drains else {}
    path = spool_settings.path
    if path is None and spool_settings.collector_url:
        path = state_dir() / "spool.sqlite3"
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Worker processes share one spool file; only the primary one drains it.
            spool = await Spool.open(
                path, limits_of(spool_settings), shared=settings.server.workers > 1, drains=drains
            )
        except (OSError, SpoolUnavailable) as exc:
            raise ConfigError(str(path), [f"spool cannot be opened: {exc}"]) from None
    if spool is not None and not spool_settings.collector_url:
        logger.warning(
            "spool.path is set but spool.collector_url is not: audit copies and samples are "
            "kept, up to the spool's bounds, for a collector configured later (a restart)"
        )
    app[SPOOL] = store = StoreAndForward(
        spool,
        app[RUNTIME].current.privacy,
        settings.site.id,
        origin=settings.site.jurisdiction,
        collector_jurisdiction=spool_settings.collector_jurisdiction,
        collector_host=urlsplit(spool_settings.collector_url or "").hostname or "",
    )
    tasks, session = [], None
    if spool is not None and spool_settings.collector_url and drains:
        session = plain_session()
        url = spool_settings.collector_url.rstrip("/") + COLLECTOR_PATH
        upstreams, loop = app[UPSTREAMS], asyncio.get_running_loop()
        drainer = Drainer(
            spool,
            http_sender(poster(session, tls=app[TLS].collector), url, headers),
            rate_per_s=spool_settings.drain_rate_per_s,
            batch_size=spool_settings.batch_size,
            # A site forced offline (serve --offline) or cut off keeps its records, as does one
            # whose collector's own tier is down; the link's return ends any backoff at once.
            online=lambda: upstreams.reaches(spool_settings.collector_url or "", loop.time()),
        )
        store.drainer = drainer
        tasks.append(asyncio.get_running_loop().create_task(drainer.run()))
    try:
        yield
    finally:
        await cancel_all(tasks)
        await store.drain_pending()
        if session is not None:
            await session.close()
        if spool is not None:
            await spool.close()


async def _upload_headers(settings: Settings) -> dict[str, str]:
    """What every upload to the collector carries: this site's id and its upload key."""
    spool = settings.spool
    headers = {SITE_HEADER: settings.site.id}
    if spool.collector_url is None or spool.collector_key_file is None:
        return headers
    key = await asyncio.to_thread(read_key_file, spool.collector_key_file)
    headers["Authorization"] = f"Bearer {key}"
    if sent_in_clear(spool.collector_url):
        logger.warning(
            "spool.collector_url is plain http to another machine: this site's upload key "
            "crosses the network unencrypted; use https"
        )
    return headers


async def collector_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = None
    tasks: list[asyncio.Task[None]] = []
    if settings.collects:
        store = await _open_collector(
            settings.site.id, Retention.of(settings.spool), shared=settings.server.workers > 1
        )
        collector = app[COLLECTOR_STORE] = store
        app[COLLECTOR_STATS] = stats = CollectorStats()
        (route,) = collector_routes(store, guard=SiteGuard.of(settings), stats=stats)
        app[COLLECTOR].append(route.handler)

        async def new_sites(settings: Settings) -> None:
            """spool.collector_sites applies on reload: the collector's handler is rebuilt
            with the new guard (an upload in progress finishes under the old one). The
            retention applies first: it does not depend on the guard the check may keep."""
            collector.retention = Retention.of(settings.spool)
            if not settings.collector_authenticates and not is_loopback(settings.server.host):
                # The file passed its checks with its own server.tls; the running listener,
                # which needs a restart to change, would leave the collector unguarded.
                raise ConfigError(
                    "spool.collector_sites",
                    ["no site left and no mTLS on the running listener: the sites are kept"],
                )
            (route,) = collector_routes(collector, guard=SiteGuard.of(settings), stats=stats)
            app[COLLECTOR][0] = route.handler

        app[RELOADER].hooks.append(new_sites)
        tasks.append(asyncio.get_running_loop().create_task(_keep_pruned(store, stats)))
    try:
        yield
    finally:
        await cancel_all(tasks)
        if store is not None:
            await store.close()


# The longest a record outlives the retention when no batch arrives (each batch prunes too).
PRUNE_INTERVAL_S = 60.0


async def _keep_pruned(store: CollectorStore, stats: CollectorStats) -> None:
    """Apply the collector's retention on a timer as well as per batch: with its sites quiet
    (closed, cut off), records past `collector_retention_s` would otherwise stay for good, and a
    bound lowered by a reload would wait for the next upload."""
    while True:
        try:
            stats.removed += await store.prune()
        except (sqlite3.Error, WorkerBusy, WorkerClosed) as exc:
            logger.warning("collector could not apply its retention: %s", type(exc).__name__)
        await asyncio.sleep(min(PRUNE_INTERVAL_S, store.retention.max_age_s / 2))


async def _open_collector(site: str, retention: Retention, shared: bool = False) -> CollectorStore:
    """The first `collector-<site>[.N].sqlite3` in the state directory nobody holds yet; with
    several workers, `collector-<site>.sqlite3` shared by all of them (one key, one record)."""
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    problem = ""
    if shared:
        path = folder / f"collector-{site}.sqlite3"
        try:
            return await CollectorStore.open(path, shared=True, retention=retention)
        except SpoolUnavailable as exc:
            raise ConfigError(str(path), [f"collector store cannot be opened: {exc}"]) from None
    for n in range(64):
        path = folder / (f"collector-{site}.sqlite3" if n == 0 else f"collector-{site}.{n}.sqlite3")
        try:
            store = await CollectorStore.open(path, retention=retention)
            if n > 0:
                _sharing("collector store", folder / f"collector-{site}.sqlite3", path)
            return store
        except SpoolInUse as exc:
            problem = str(exc)
        except SpoolUnavailable as exc:
            # Damaged, or from a later release: moving on to the next file would start an
            # empty store and forget every key the collector has de-duplicated so far.
            raise ConfigError(str(path), [f"collector store cannot be opened: {exc}"]) from None
    raise ConfigError(str(folder), [f"collector store cannot be opened: {problem}"])


def _sharing(what: str, taken: Path, used: Path) -> None:
    """One process per site and state directory (workers aside): a second router there by
    mistake would split the site's trail, or the collector's memory of keys, in two."""
    logger.warning(
        "%s %s is held by another process (a second router on this state directory?): "
        "this one uses %s",
        what,
        taken,
        used,
    )


def _open_audit_log(settings: Settings) -> AuditLog:
    """Each process writes its own chain: the first `<site>[.N].jsonl` nobody holds yet
    (several workers, or several routers in one test process, share a folder)."""
    audit = settings.audit
    folder = audit_path(audit.path)
    problem = ""
    for worker in range(64):
        path = log_file(folder, settings.site.id, worker)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            log = AuditLog(path, fsync=audit.fsync, batch_interval_ms=audit.batch_interval_ms)
            if worker > 0 and settings.server.workers == 1:
                _sharing("audit log", log_file(folder, settings.site.id), path)
            return log
        except AuditLogHeld as exc:
            problem = str(exc)
            if path.suffix == ".jsonl" and path == folder:
                break  # a single file was named: no other to try
        except AuditLogError as exc:
            # A damaged or foreign file is the operator's to look at: writing on in the next
            # worker's file would hide it (and leave the chain's history split in two).
            raise ConfigError(str(path), [f"audit log cannot be opened: {exc}"]) from None
        except OSError as exc:
            raise ConfigError(str(path), [f"audit log cannot be opened: {exc}"]) from None
    raise ConfigError(str(folder), [f"audit log cannot be opened: {problem}"])


def _key_scanner(app: web.Application) -> Callable[[str], bool]:
    """Whether the current bundle's detectors find something in a text (a JSON key)."""

    def holds_data(key: str) -> bool:
        return bool(app[RUNTIME].current.privacy.detectors.locate(key))

    return holds_data


async def audit_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    audit = settings.audit
    log: AuditLog | None = None
    if audit.enabled:
        log = await asyncio.to_thread(_open_audit_log, settings)
    # Without a spool a copy would be built per answer and thrown away.
    copy = app[SPOOL].audit_copy if app[SPOOL].spool is not None else None
    if log is not None and copy is not None:
        # A process killed after writing records but before the spool committed their copies
        # leaves the centre without them: the last moments' copies are made again (the spool
        # keeps one record per key, the collector one per key).
        copied = await asyncio.to_thread(take_copied_mark, log.path)
        for body in await asyncio.to_thread(recent_records, log.path, RECOPY_WINDOW_S, copied):
            copy(body)
    # The cache's digester: a binary tensor is digested once for its cache key and its record.
    app[TRAIL] = Trail(log, app[CACHE].digester, settings.site, copy, _key_scanner(app))
    try:
        yield
    finally:
        if log is not None:
            await log.aclose()
            head = log.head
            if copy is not None and head is not None:
                # Every copy committed: the next start need not make the last ones again.
                await app[SPOOL].drain_pending()
                await asyncio.to_thread(mark_copied, log.path, head.id)


async def collect(request: web.Request) -> web.StreamResponse:
    """The central tier's collector (POST /v1/spool/batches); 404 where this site collects not."""
    handlers = request.app[COLLECTOR]
    if not handlers:
        raise RouteNotFound("no such endpoint")
    return await handlers[0](request)
