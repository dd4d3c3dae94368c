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
from router.api.door import front_door
from router.api.state import (
    BUNDLE,
    CACHE,
    COLLECTOR,
    LIMITERS,
    RELOADER,
    SETTINGS,
    STATUS,
    TELEMETRY,
    TLS,
    UPSTREAMS,
    Pipelines,
    ServerStatus,
)
from router.budget import model_budget
from router.cache import ResponseCache
from router.errors import ConfigError
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
from router.settings import Settings
from router.spool.collector import COLLECTOR_PATH
from router.stages.cache import LookupCache
from router.stages.classify import ClassifyAndRedact
from router.stages.dispatch import Dispatch
from router.stages.parse import ParseInferRequest, ParseOpenAIRequest
from router.stages.route import DecideRoute
from router.stages.tenant import AuthorizeModel, ResolveTenant
from router.stores import audit_context, collect, collector_context, spool_context
from router.telemetry import Telemetry
from router.telemetry.tracing import provider_from_env, tracer_of
from router.tenancy import Tenancy
from router.upstreams.registry import Upstreams
from router.upstreams.tls import TlsContexts, reload_contexts

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
        middlewares=[front_door(settings.limits.max_in_flight)],
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
    origin = "embedded" if start.state.source == "embedded" else start.source.name
    if not start.pending:  # a bundle still to come is checked when it arrives
        check_auth(settings, start.bundle, origin)
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
            # A bundle arriving later (reload, source poll) must pass what this one passed.
            vet_bundle=partial(check_auth, origin=origin),
        )
    )
    app.cleanup_ctx.append(_reload_hooks)
    app.cleanup_ctx.append(spool_context)
    app.cleanup_ctx.append(audit_context)
    kserve_v2.add_routes(app)
    openai.add_routes(app)
    openapi.add_routes(app)
    app[COLLECTOR] = []
    app.cleanup_ctx.append(collector_context)
    app.router.add_post(COLLECTOR_PATH, collect)
    app.cleanup_ctx.append(partial(update_tasks, start=start))
    return app


def upload_keys(settings: Settings) -> frozenset[str]:
    """The hashes of every site's upload key for this site's collector."""
    return frozenset(h for hashes in settings.spool.site_key_hashes().values() for h in hashes)


def check_auth(settings: Settings, bundle: PolicyBundle, origin: str) -> None:
    """`origin` names the bundle as the operator configured it: `bundle.path` is the copy
    activated under the state directory, which an edit would never reach."""
    if (
        settings.auth_required
        and not Tenancy(
            bundle.tenants, required=True, limiters=Limiters(), upload_keys=upload_keys(settings)
        ).has_keys
    ):
        where = "the embedded policy bundle" if origin == "embedded" else origin
        fix = (
            "set policy.bundle to a bundle of your own whose tenants.yaml lists key hashes"
            if origin == "embedded"
            else "add key hashes under tenants.<name>.keys"
        )
        raise ConfigError(
            f"tenants.yaml of {where}",
            [
                f"auth.mode is 'required' but no tenant has a key: {fix} "
                "(`layer-router tenant new-key` makes one)"
            ],
        )


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
        privacy.bundle.tenants,
        required=settings.auth_required,
        limiters=limiters or Limiters(),
        upload_keys=upload_keys(settings),
    )
    for name in tenancy.holding_upload_keys:
        log.warning("tenant %s holds a site's upload key: that key is no API key here", name)
    tenant = ResolveTenant(tenancy, privacy.bundle.revision)
    authorize = AuthorizeModel(tenancy)
    classify = ClassifyAndRedact(privacy, redaction_executor, upstreams, escalating, cached)
    lookup = LookupCache(cache, settings.cache, privacy.bundle, settings.site, models)
    route = DecideRoute(settings.routing, models, upstreams, settings.site, privacy.bundle)
    dispatch = Dispatch(models, upstreams, settings.routing, tier, privacy, route, tenancy)
    parse_openai = ParseOpenAIRequest(
        partial(model_budget, privacy.bundle.budgets, settings.routing)
    )
    return Pipelines(
        v2_infer=Pipeline([tenant, ParseInferRequest(), classify, lookup, route, dispatch], tracer),
        openai=Pipeline(
            [tenant, parse_openai, authorize, classify, lookup, route, dispatch], tracer
        ),
        # Metadata relayed upstream carries headers and a query: the same rules apply.
        upstream_only=Pipeline([tenant, classify, route, dispatch], tracer),
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
