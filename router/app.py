"""build_app(settings) -> web.Application: the one place where the program is assembled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import TYPE_CHECKING

from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from router.api import kserve_v2, openai, openapi
from router.api.admission import admission
from router.api.current import generation_middleware
from router.api.errors import error_middleware
from router.api.state import (
    BUNDLE,
    CACHE,
    COLLECTOR,
    LIMITERS,
    RELOADER,
    RUNTIME,
    SETTINGS,
    SPOOL,
    STATUS,
    TELEMETRY,
    TLS,
    TRAIL,
    UPSTREAMS,
    Pipelines,
    ServerStatus,
)
from router.audit import AuditLog, AuditLogError, log_file
from router.cache import ResponseCache
from router.errors import ConfigError, RouteNotFound
from router.generations import runtime_context, update_tasks
from router.inference.repository import (
    ModelRepository,
    SessionBuilder,
    default_session_builder,
)
from router.pipeline import Pipeline
from router.policy.bundle import PolicyBundle
from router.policy.distribution import first_bundle
from router.privacy import Privacy
from router.ratelimit import Limiters
from router.resources import audit_path, state_dir
from router.settings import Settings
from router.spool import Drainer, Spool, SpoolUnavailable, http_sender, limits_of
from router.spool.collector import COLLECTOR_PATH, CollectorStore, collector_routes
from router.stages.cache import LookupCache
from router.stages.classify import ClassifyAndRedact
from router.stages.dispatch import Dispatch
from router.stages.parse import ParseInferRequest, ParseOpenAIRequest
from router.stages.route import DecideRoute
from router.stages.tenant import AuthorizeModel, ResolveTenant
from router.store_forward import StoreAndForward
from router.telemetry import Telemetry
from router.telemetry.tracing import provider_from_env, tracer_of
from router.tenancy import Tenancy
from router.trail import Trail
from router.upstreams.client import plain_session, poster
from router.upstreams.registry import Upstreams
from router.upstreams.tls import TlsContexts, reload_contexts
from router.workers import is_primary

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)


def build_app(
    settings: Settings,
    *,
    providers: Sequence[str] | None = None,
    session_builder: SessionBuilder = default_session_builder,
    tracer_provider: TracerProvider | None = None,
    read_settings: Callable[[], Settings] | None = None,
) -> web.Application:
    """`providers` and `session_builder` stand in for onnxruntime's in tests;
    `tracer_provider` for the one the OTEL_* variables configure (tests export in memory);
    `read_settings` re-reads the site config on reload (None: reloads keep the settings,
    re-read the rest)."""
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[
            error_middleware,
            admission(settings.limits.max_in_flight),
            generation_middleware,
        ],
    )
    app[SETTINGS] = settings
    app[STATUS] = ServerStatus()
    app[TELEMETRY] = Telemetry(tracer_provider=tracer_provider or _provider_from_env())
    if tracer_provider is None:  # ours to flush and shut down; a caller's stays the caller's
        app.cleanup_ctx.append(_tracing)
    app[TLS] = TlsContexts.from_settings(settings)  # a bad certificate file stops start-up
    start = first_bundle(settings)
    app[BUNDLE] = start.state
    privacy = Privacy.build(start.bundle, settings.policy.secret_file)
    cache = settings.cache
    app[CACHE] = ResponseCache(privacy.secret, cache.max_bytes, cache.max_stale_s)
    app[LIMITERS] = Limiters()  # rate-limit buckets, kept across policy reloads
    if not start.pending:  # a bundle still to come is checked when it arrives
        _check_auth(settings, start.bundle)
    app.cleanup_ctx.append(_upstreams)
    app.cleanup_ctx.append(
        partial(
            runtime_context,
            start=start,
            privacy=privacy,
            providers=providers,
            build=session_builder,
            read_settings=read_settings,
            build_pipelines=partial(
                build_pipelines,
                tracer=tracer_of(app[TELEMETRY].tracer_provider),
                limiters=app[LIMITERS],
            ),
        )
    )
    app.cleanup_ctx.append(_reload_hooks)
    app.cleanup_ctx.append(_spool)
    app.cleanup_ctx.append(_audit)
    kserve_v2.add_routes(app)
    openai.add_routes(app)
    openapi.add_routes(app)
    app[COLLECTOR] = []
    app.cleanup_ctx.append(_collector)
    app.router.add_post(COLLECTOR_PATH, _collect)
    app.cleanup_ctx.append(partial(update_tasks, start=start))
    return app


def _check_auth(settings: Settings, bundle: PolicyBundle) -> None:
    if (
        settings.auth_required
        and not Tenancy(bundle.tenants, required=True, limiters=Limiters()).has_keys
    ):
        raise ConfigError(
            str(bundle.path / "tenants.yaml"),
            [
                "auth.mode is 'required' but no tenant has a key: add key hashes under "
                "tenants.<name>.keys (`layer-router tenant new-key` makes one)"
            ],
        )


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
    tracer: Tracer | None = None,
    limiters: Limiters | None = None,
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
    tenancy = Tenancy(
        privacy.bundle.tenants, required=settings.auth_required, limiters=limiters or Limiters()
    )
    tenant, authorize = ResolveTenant(tenancy), AuthorizeModel(tenancy)
    classify = ClassifyAndRedact(privacy, redaction_executor, upstreams, escalating, cached)
    lookup = LookupCache(cache, settings.cache, privacy.bundle, settings.site)
    route = DecideRoute(settings.routing, models, upstreams, settings.site, privacy.bundle)
    dispatch = Dispatch(models, upstreams, settings.routing, tier, privacy, route)
    return Pipelines(
        v2_infer=Pipeline([tenant, ParseInferRequest(), classify, lookup, route, dispatch], tracer),
        openai=Pipeline(
            [tenant, ParseOpenAIRequest(), authorize, classify, lookup, route, dispatch], tracer
        ),
        upstream_only=Pipeline([tenant, route, dispatch], tracer),
        tenancy=tenancy,
    )


def _provider_from_env() -> TracerProvider | None:
    try:
        return provider_from_env()
    except ValueError as exc:
        raise ConfigError("environment", [str(exc)]) from None


async def _tracing(app: web.Application) -> AsyncIterator[None]:
    try:
        yield
    finally:
        provider = app[TELEMETRY].tracer_provider
        if provider is not None:
            # Exports what is still queued: a blocking flush, kept off the loop.
            await asyncio.to_thread(provider.shutdown)


async def _reload_hooks(app: web.Application) -> AsyncIterator[None]:
    """Every reload (SIGHUP, polling) re-plans the upstream clusters from the new settings and
    re-reads the certificate files that changed."""

    async def replan_upstreams(settings: Settings) -> None:
        tls = app[TLS]
        # Reading certificates is blocking file I/O; a bad file keeps every cluster as it was.
        clients = await asyncio.to_thread(tls.clients_for, settings.upstreams)
        changed = await app[UPSTREAMS].reconfigure(
            settings.upstreams, settings.routing.offline, clients, settings.server.drain_timeout_s
        )
        tls.clients = clients
        if changed:
            log.info("upstream clusters re-planned: %s", ", ".join(changed))

    async def reread_certificates(_settings: Settings) -> None:
        await reload_contexts(app[TLS])

    app[RELOADER].hooks += [replan_upstreams, reread_certificates]
    yield


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    upstreams = Upstreams.from_settings(
        settings.upstreams, settings.routing.offline, app[TLS].clients
    )
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
    drains = is_primary()
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
    app[SPOOL] = store = StoreAndForward(spool, app[RUNTIME].current.privacy, settings.site.id)
    tasks, session = [], None
    if spool is not None and spool_settings.collector_url and drains:
        session = plain_session()
        url = spool_settings.collector_url.rstrip("/") + COLLECTOR_PATH
        drainer = Drainer(
            spool,
            http_sender(poster(session, tls=app[TLS].collector), url),
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
        store = await _open_collector(settings.site.id, shared=settings.server.workers > 1)
        (route,) = collector_routes(store)
        app[COLLECTOR].append(route.handler)
    try:
        yield
    finally:
        if store is not None:
            await store.close()


async def _open_collector(site: str, shared: bool = False) -> CollectorStore:
    """The first `collector-<site>[.N].sqlite3` in the state directory nobody holds yet; with
    several workers, `collector-<site>.sqlite3` shared by all of them (one key, one record)."""
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    problem = ""
    if shared:
        path = folder / f"collector-{site}.sqlite3"
        try:
            return await CollectorStore.open(path, shared=True)
        except SpoolUnavailable as exc:
            raise ConfigError(str(path), [f"collector store cannot be opened: {exc}"]) from None
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
    app[TRAIL] = Trail(log, app[RUNTIME].current.privacy.secret, settings.site, copy)
    try:
        yield
    finally:
        if log is not None:
            await log.aclose()
