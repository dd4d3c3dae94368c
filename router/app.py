"""build_app(settings) -> web.Application: the one place where the program is assembled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial

from aiohttp import web

from router.api import kserve_v2, openai
from router.api.errors import error_middleware
from router.api.state import (
    CACHE,
    COLLECTOR,
    MODELS,
    PIPELINES,
    POLICY,
    PRIVACY,
    SETTINGS,
    SPOOL,
    STATUS,
    TRAIL,
    UPSTREAMS,
    Pipelines,
    ServerStatus,
)
from router.audit import AuditLog, AuditLogError, log_file
from router.cache import ResponseCache
from router.errors import ConfigError, RouteNotFound
from router.inference.repository import (
    Loader,
    ModelRepository,
    SessionBuilder,
    available_providers,
    default_session_builder,
)
from router.pipeline import Pipeline
from router.policy.bundle import load_bundle
from router.privacy import Privacy
from router.resources import audit_path, default_policy_bundle, demo_model_repository, state_dir
from router.settings import Settings
from router.spool import Drainer, Spool, SpoolUnavailable, http_sender, limits_of
from router.spool.collector import COLLECTOR_PATH, CollectorStore, collector_routes
from router.stages.cache import LookupCache
from router.stages.classify import ClassifyAndRedact
from router.stages.dispatch import Dispatch
from router.stages.parse import ParseInferRequest, ParseOpenAIRequest
from router.stages.route import DecideRoute
from router.store_forward import StoreAndForward
from router.trail import Trail
from router.upstreams.client import plain_session, poster
from router.upstreams.registry import Upstreams


def build_app(
    settings: Settings,
    *,
    providers: Sequence[str] | None = None,
    session_builder: SessionBuilder = default_session_builder,
) -> web.Application:
    """`providers` and `session_builder` stand in for onnxruntime's in tests."""
    app = web.Application(
        client_max_size=settings.server.max_body_bytes, middlewares=[error_middleware]
    )
    app[SETTINGS] = settings
    app[STATUS] = ServerStatus()
    app[POLICY] = bundle = load_bundle(settings.policy.bundle or default_policy_bundle())
    app[PRIVACY] = privacy = Privacy.build(bundle, settings.policy.secret_file)
    cache = settings.cache
    app[CACHE] = ResponseCache(privacy.secret, cache.max_bytes, cache.max_stale_s)
    app.cleanup_ctx.append(partial(_models, providers=providers, build=session_builder))
    app.cleanup_ctx.append(_upstreams)
    app.cleanup_ctx.append(_spool)
    app.cleanup_ctx.append(_audit)
    app.cleanup_ctx.append(_pipelines)
    kserve_v2.add_routes(app)
    openai.add_routes(app)
    app[COLLECTOR] = []
    app.cleanup_ctx.append(_collector)
    app.router.add_post(COLLECTOR_PATH, _collect)
    return app


async def _collect(request: web.Request) -> web.StreamResponse:
    """The central tier's collector (POST /v1/spool/batches); 404 where this site collects not."""
    handlers = request.app[COLLECTOR]
    if not handlers:
        raise RouteNotFound("no such endpoint")
    return await handlers[0](request)


def build_pipelines(
    settings: Settings,
    models: ModelRepository,
    upstreams: Upstreams,
    privacy: Privacy,
    redaction_executor: Executor,
    cache: ResponseCache,
) -> Pipelines:
    """The request chains, as plain lists: the order here is the order a request sees."""
    tier = settings.site.tier.value
    escalating = frozenset(m for m, r in settings.routing.models.items() if r.escalate)
    c = settings.cache
    cached = frozenset(
        api
        for api, ttl in (("kserve-v2", c.kserve_v2_ttl_s), ("openai", c.openai_ttl_s))
        if c.enabled and ttl > 0
    )
    classify = ClassifyAndRedact(privacy, redaction_executor, upstreams, escalating, cached)
    lookup = LookupCache(cache, settings.cache, privacy.bundle, settings.site)
    route = DecideRoute(settings.routing, models, upstreams, settings.site, privacy.bundle)
    dispatch = Dispatch(models, upstreams, settings.routing, tier, privacy, route)
    return Pipelines(
        v2_infer=Pipeline([ParseInferRequest(), classify, lookup, route, dispatch]),
        openai=Pipeline([ParseOpenAIRequest(), classify, lookup, route, dispatch]),
        upstream_only=Pipeline([route, dispatch]),
    )


async def _models(
    app: web.Application, *, providers: Sequence[str] | None, build: SessionBuilder
) -> AsyncIterator[None]:
    settings = app[SETTINGS].models
    executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="inference")
    available = providers if providers is not None else available_providers()
    loader = Loader(settings, executor, available, build)
    path = settings.repository or demo_model_repository()
    # Loading reads files and builds sessions: seconds of blocking work kept off the loop.
    repository = await asyncio.to_thread(loader.load, path)
    app[MODELS] = repository
    try:
        yield
    finally:
        repository.close()
        executor.shutdown(wait=False, cancel_futures=True)


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    upstreams = Upstreams.from_settings(settings.upstreams, settings.routing.offline)
    app[UPSTREAMS] = upstreams
    await upstreams.start()
    try:
        yield
    finally:
        await upstreams.close()


async def _spool(app: web.Application) -> AsyncIterator[None]:
    """The site's spool and its drainer (when a collector is configured), and the collector
    endpoint itself on the central tier."""
    settings = app[SETTINGS]
    spool_settings = settings.spool
    spool: Spool | None = None
    path = spool_settings.path
    if path is None and spool_settings.collector_url:
        path = state_dir() / "spool.sqlite3"
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            spool = await Spool.open(path, limits_of(spool_settings))
        except (OSError, SpoolUnavailable) as exc:
            raise ConfigError(str(path), [f"spool cannot be opened: {exc}"]) from None
    app[SPOOL] = store = StoreAndForward(spool, app[PRIVACY], settings.site.id)
    tasks, session = [], None
    if spool is not None and spool_settings.collector_url:
        session = plain_session()
        url = spool_settings.collector_url.rstrip("/") + COLLECTOR_PATH
        drainer = Drainer(
            spool,
            http_sender(poster(session), url),
            rate_per_s=spool_settings.drain_rate_per_s,
            batch_size=spool_settings.batch_size,
        )
        tasks.append(asyncio.get_running_loop().create_task(drainer.run()))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.drain_pending()
        if session is not None:
            await session.close()
        if spool is not None:
            await spool.close()


async def _collector(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    collects = settings.spool.collect
    if collects is None:
        collects = settings.site.tier.value == "central"
    store = None
    if collects:
        store = await _open_collector(settings.site.id)
        (route,) = collector_routes(store)
        app[COLLECTOR].append(route.handler)
    try:
        yield
    finally:
        if store is not None:
            await store.close()


async def _open_collector(site: str) -> CollectorStore:
    """The first `collector-<site>[.N].sqlite3` in the state directory nobody holds yet."""
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    problem = ""
    for n in range(64):
        path = folder / (f"collector-{site}.sqlite3" if n == 0 else f"collector-{site}.{n}.sqlite3")
        try:
            return await CollectorStore.open(path)
        except SpoolUnavailable as exc:
            problem = str(exc)
    raise ConfigError(str(folder), [f"collector store cannot be opened: {problem}"])


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
            return AuditLog(path, fsync=audit.fsync, batch_interval_ms=audit.batch_interval_ms)
        except AuditLogError as exc:
            problem = str(exc)
            if path.suffix == ".jsonl" and path == folder:
                break  # a single file was named: no other to try
        except OSError as exc:
            raise ConfigError(str(path), [f"audit log cannot be opened: {exc}"]) from None
    raise ConfigError(str(folder), [f"audit log cannot be opened: {problem}"])


async def _audit(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    audit = settings.audit
    log: AuditLog | None = None
    if audit.enabled:
        log = await asyncio.to_thread(_open_audit_log, settings)
    # Without a spool a copy would be built per answer and thrown away.
    copy = app[SPOOL].audit_copy if app[SPOOL].spool is not None else None
    app[TRAIL] = Trail(log, app[PRIVACY].secret, settings.site, copy)
    try:
        yield
    finally:
        if log is not None:
            await log.aclose()


async def _pipelines(app: web.Application) -> AsyncIterator[None]:
    # Large bodies are scanned here, never on the event loop; two threads bound that work.
    executor = ThreadPoolExecutor(2, thread_name_prefix="redaction")
    app[PIPELINES] = build_pipelines(
        app[SETTINGS], app[MODELS], app[UPSTREAMS], app[PRIVACY], executor, app[CACHE]
    )
    try:
        yield
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
