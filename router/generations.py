"""The runtime generations' life: the first one at start-up (models loaded off the loop), the
reloader that makes the next ones, the polling tasks that trigger it, and the clean-up."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor

from aiohttp import web

from router.api.state import CACHE, RELOADER, RUNTIME, SETTINGS, SPOOL, UPSTREAMS
from router.cache import ResponseCache
from router.inference.repository import (
    Loader,
    ModelRepository,
    SessionBuilder,
    available_providers,
)
from router.policy.bundle import PolicyBundle
from router.policy.distribution import Start
from router.policy.updater import BundleUpdater
from router.privacy import Privacy
from router.reload import Reloader, VetBundle
from router.resources import demo_model_repository
from router.runtime import Generation, Pipelines, Runtime
from router.settings import Settings
from router.tasks import cancel_all
from router.upstreams.registry import Upstreams

BuildPipelines = Callable[
    [Settings, ModelRepository, Upstreams, Privacy, Executor, ResponseCache], Pipelines
]


async def runtime_context(
    app: web.Application,
    *,
    start: Start,
    privacy: Privacy,
    providers: Sequence[str] | None,
    build: SessionBuilder,
    read_settings: Callable[[], Settings] | None,
    build_pipelines: BuildPipelines,
    vet_bundle: VetBundle = lambda _settings, _bundle: None,
) -> AsyncIterator[None]:
    """The first runtime generation, and the reloader that makes the next ones (`vet_bundle`
    refuses a new bundle these settings cannot serve under, as start-up does)."""
    settings = app[SETTINGS]
    executor = ThreadPoolExecutor(settings.models.inference_threads, thread_name_prefix="inference")
    available = providers if providers is not None else available_providers()
    # Large bodies are scanned here, never on the event loop; two threads bound that work.
    redaction = ThreadPoolExecutor(2, thread_name_prefix="redaction")
    numbers = itertools.count(1)

    def load_models(settings: Settings) -> ModelRepository:
        loader = Loader(settings.models, executor, available, build)
        return loader.load(settings.models.repository or demo_model_repository())

    def generation(
        settings: Settings, bundle: PolicyBundle, models: ModelRepository, pending: bool
    ) -> Generation:
        """Blocking (compiles the bundle's detectors unless they are known): run in a thread.
        Pure but for the number and the rate-limit buckets carried over (`Limiters`), which
        the reloader's one build at a time keeps consistent."""
        site_privacy = Privacy.build(bundle, settings.policy.secret_file, privacy.secret)
        pipelines = build_pipelines(
            settings, models, app[UPSTREAMS], site_privacy, redaction, app[CACHE]
        )
        return Generation(next(numbers), settings, bundle, site_privacy, models, pipelines, pending)

    # Loading reads files and builds sessions: seconds of blocking work kept off the loop.
    models = await asyncio.to_thread(load_models, settings)
    first = await asyncio.to_thread(generation, settings, start.bundle, models, start.pending)
    app[RUNTIME] = runtime = Runtime(first)
    runtime.listeners.append(lambda new: setattr(app[SPOOL], "privacy", new.privacy))
    updater = BundleUpdater(
        start.source,
        start.keeper,
        start.state,
        lambda bundle: app[RELOADER].activate_bundle(bundle),
        persist=start.remote,
    )
    updater.active = start.content
    app[RELOADER] = reloader = Reloader(
        runtime, updater, generation, load_models, read_settings, vet_bundle
    )
    await reloader.start()
    try:
        yield
    finally:
        await runtime.close()
        await start.source.close()
        executor.shutdown(wait=False, cancel_futures=True)
        redaction.shutdown(wait=False, cancel_futures=True)


async def update_tasks(app: web.Application, *, start: Start) -> AsyncIterator[None]:
    """Polling: the bundle source (a remote one at once: readiness waits for it), the config
    file and the model repository (when `reload.poll_interval_s` is set)."""
    settings = app[SETTINGS]
    reloader = app[RELOADER]
    loop = asyncio.get_running_loop()
    tasks = []
    if settings.policy.source is not None:
        interval = settings.policy.source.poll_interval_s
        tasks.append(loop.create_task(reloader.updater.run(interval, first=start.remote)))
    if settings.reload.poll_interval_s > 0:
        tasks.append(loop.create_task(reloader.poll(settings.reload.poll_interval_s)))
    try:
        yield
    finally:
        await cancel_all(tasks)
