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
    MODELS,
    PIPELINES,
    POLICY,
    PRIVACY,
    SETTINGS,
    STATUS,
    UPSTREAMS,
    Pipelines,
    ServerStatus,
)
from router.cache import ResponseCache
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
from router.resources import default_policy_bundle, demo_model_repository
from router.settings import Settings
from router.stages.cache import LookupCache
from router.stages.classify import ClassifyAndRedact
from router.stages.dispatch import Dispatch
from router.stages.parse import ParseInferRequest, ParseOpenAIRequest
from router.stages.route import DecideRoute
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
    app.cleanup_ctx.append(_pipelines)
    kserve_v2.add_routes(app)
    openai.add_routes(app)
    return app


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
