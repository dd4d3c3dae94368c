"""Hot reload: on SIGHUP, by polling, or when a new policy bundle arrives, build a new runtime
generation (settings, bundle, privacy, models, pipelines) and swap it in; requests in flight
finish on the old one. Settings that need a restart are reported and left as they were."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from router.errors import ConfigError
from router.inference.repository import ModelRepository
from router.policy.bundle import PolicyBundle
from router.policy.updater import BundleUpdater
from router.privacy import bundle_detectors
from router.reloadable import applied, repository_fingerprint, restart_only_changes
from router.resources import demo_model_repository
from router.runtime import Generation, Runtime
from router.settings import Settings

log = logging.getLogger(__name__)

# Built elsewhere (router.app): a generation from settings, a bundle and models.
BuildGeneration = Callable[[Settings, PolicyBundle, ModelRepository, bool], Generation]
LoadModels = Callable[[Settings], ModelRepository]  # blocking
# Plug-ins told about every reload with the new settings (e.g. TLS material re-read).
ReloadHook = Callable[[Settings], Awaitable[None]]
# What start-up refuses of a bundle for these settings (ConfigError), refused on reload too.
VetBundle = Callable[[Settings, PolicyBundle], None]


@dataclass(slots=True)
class ReloadState:
    generation: int = 1
    reloads: int = 0
    failures: int = 0
    last_reload: float | None = None
    last_error: str | None = None
    restart_required: list[str] = field(default_factory=list)  # changed, not applied

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Inputs:
    """What a generation is built from."""

    settings: Settings
    bundle: PolicyBundle
    models: ModelRepository
    pending: bool

    @classmethod
    def of(cls, generation: Generation) -> Inputs:
        g = generation
        return cls(g.settings, g.bundle, g.models, g.pending)

    def live_in(self, generation: Generation) -> bool:
        g = generation
        return (
            self.bundle is g.bundle
            and self.models is g.models
            and self.pending == g.pending
            and self.settings == g.settings
        )


class Reloader:
    """Makes the runtime generations after the first. Whatever asks for a change (a config
    reload, a bundle activation) first records it in `wanted`, the newest of each input, then
    applies: under one lock, a generation is built from `wanted` off the loop and swapped in on
    it. The last to apply applies every change recorded before, so concurrent changes all
    end up live; and nothing waits for a lock while holding that one (no deadlock)."""

    def __init__(
        self,
        runtime: Runtime,
        updater: BundleUpdater,
        build: BuildGeneration,
        load_models: LoadModels,
        read_settings: Callable[[], Settings] | None,
        vet: VetBundle = lambda _settings, _bundle: None,
    ) -> None:
        self.runtime = runtime
        self._vet = vet
        self.updater = updater
        self.state = ReloadState()
        self.hooks: list[ReloadHook] = []
        self.wanted = Inputs.of(runtime.current)
        self._build = build  # blocking, pure: runs in a thread
        self._load_models = load_models
        self._read_settings = read_settings
        self._started = runtime.current.settings
        self._fingerprint = ""
        self._refused = ""  # a repository state that failed to load: polls do not retry it
        # Reloads (config file, bundle poll, model repository) do not overlap; bundle
        # activations do not take this lock, so they never wait behind a reload.
        self._reload_lock = asyncio.Lock()
        self._apply_lock = asyncio.Lock()  # building and swapping: the lock taken last

    async def start(self) -> None:
        self._fingerprint = await asyncio.to_thread(self._models_fingerprint, self._started)

    async def activate_bundle(self, bundle: PolicyBundle) -> None:
        """A new good bundle: the newest settings and models under new rules. ConfigError
        (nothing changes) when its detectors do not compile or the settings refuse it."""
        await asyncio.to_thread(bundle_detectors, bundle)  # compiled by the keeper already
        self._vet(self.wanted.settings, bundle)
        self._want_bundle(bundle)
        await self._apply()

    def _want_bundle(self, bundle: PolicyBundle) -> None:
        self.wanted = dataclasses.replace(self.wanted, bundle=bundle, pending=False)

    async def _apply(self) -> None:
        """Build a generation from the wanted inputs and swap it in, unless it is live."""
        async with self._apply_lock:
            wanted, current = self.wanted, self.runtime.current
            if wanted.live_in(current):
                return  # an apply that ran while this one waited brought our change too
            try:
                generation = await asyncio.to_thread(
                    self._build, wanted.settings, wanted.bundle, wanted.models, wanted.pending
                )
            except Exception:  # not when cancelled: the wanted inputs stay for the next apply
                self._forget(wanted, current)
                raise
            self._swap(generation)

    def _forget(self, failed: Inputs, current: Generation) -> None:
        """Inputs that failed to build go back to the live ones (bundles' detectors are
        checked before they are wanted, so this is for the unexpected), unless newer ones
        came in the meantime."""
        w = self.wanted
        self.wanted = Inputs(
            current.settings if w.settings is failed.settings else w.settings,
            current.bundle if w.bundle is failed.bundle else w.bundle,
            current.models if w.models is failed.models else w.models,
            current.pending if w.pending == failed.pending else w.pending,
        )
        if failed.models is not current.models and failed.models is not self.wanted.models:
            failed.models.close()
            self._fingerprint = ""  # the next poll loads the repository again

    def _swap(self, generation: Generation) -> None:
        self.runtime.swap(generation)
        self.state.generation = generation.number

    async def reload(self, reason: str) -> bool:
        """Re-read config, bundle and models; True when they changed (and are live)."""
        async with self._reload_lock:
            self.state.reloads += 1
            self.state.last_reload = time.time()
            try:
                changed = await self._reload()
            except (ConfigError, OSError) as exc:
                # OSError: the repository changed under the load (a folder removed, made
                # unreadable); escaping, it would end the polling task for good.
                return self._failed(reason, str(exc))
            except Exception as exc:  # unforeseen: reported as failed, never as "reloaded"
                return self._failed(reason, f"unexpected {type(exc).__name__}")
            self.state.last_error = None
            log.info("reload (%s): generation %d", reason, self.runtime.current.number)
            return changed

    def _failed(self, reason: str, error: str) -> bool:
        self.state.failures += 1
        self.state.last_error = error
        log.error(
            "reload (%s) failed; still serving generation %d: %s",
            reason,
            self.runtime.current.number,
            error,
        )
        return False

    async def _reload(self) -> bool:
        settings = self.wanted.settings
        if self._read_settings is not None:
            settings, restart = await asyncio.to_thread(self._settings_from_file)
            self.state.restart_required = restart
            for key in restart:
                log.warning("setting %s changed: it takes effect only after a restart", key)
        fresh: list[PolicyBundle] = []

        async def hold(bundle: PolicyBundle) -> None:
            # Wanted at once (a bundle activated after it must win), live with the models.
            # One these settings refuse is the updater's rejection: the active one stays.
            self._vet(settings, bundle)
            fresh.append(bundle)
            self._want_bundle(bundle)

        await self.updater.check(activate=hold)
        try:
            models = await self._models_for(settings)
        except Exception:  # not when cancelled: any failure of the models, reported by reload
            if fresh:  # the bundle is good even when the models are not: apply it alone
                await self._apply()
            raise
        before = self.wanted
        changed = bool(fresh) or models is not before.models or settings != before.settings
        self.wanted = dataclasses.replace(before, settings=settings, models=models)
        await self._apply()
        for hook in self.hooks:
            try:
                await hook(settings)
            except Exception as exc:  # a plug-in's failure must not undo the reload
                log.error("reload hook %s failed: %s", getattr(hook, "__name__", hook), exc)
        return changed

    def _settings_from_file(self) -> tuple[Settings, list[str]]:
        """The running settings with the file's reloadable keys, and the keys that changed but
        need a restart. Blocking (file I/O, validation)."""
        assert self._read_settings is not None
        new = self._read_settings()
        return applied(self._started, new), restart_only_changes(self._started, new)

    async def _models_for(self, settings: Settings) -> ModelRepository:
        current = self.wanted
        fingerprint = await asyncio.to_thread(self._models_fingerprint, settings)
        if fingerprint == self._fingerprint and settings.models == current.settings.models:
            return current.models
        models = await asyncio.to_thread(self._load_models, settings)
        if current.models.ready and not models.ready:
            # Swapping in a repository with broken models would fail requests that work now.
            problems = models.failures
            models.close()
            self._refused = fingerprint
            raise ConfigError(str(models.path), problems)
        self._fingerprint = fingerprint
        models.carry_stats_from(current.models)
        return models

    @staticmethod
    def _models_fingerprint(settings: Settings) -> str:
        path = settings.models.repository or demo_model_repository()
        return repository_fingerprint(path) if path.is_dir() else ""

    async def poll(self, interval_s: float) -> None:
        """Reload whenever the config file or the model repository changed. Inputs that
        failed to reload are not tried again until one of them changes: each try loads every
        model and logs an error."""
        failed: tuple[str, Settings | None] | None = None
        while True:
            await asyncio.sleep(interval_s)
            settings = self.wanted.settings
            try:
                fingerprint = await asyncio.to_thread(self._models_fingerprint, settings)
            except OSError as exc:
                # A folder removed while it was listed (rm -r of a version, an rsync's temp
                # file renamed): the next look sees the repository as it is now. Escaping,
                # the error would end polling for good, with nothing said.
                log.warning("model repository changed while it was read (%s); looking again", exc)
                continue
            from_file = await self._file_settings()
            changed = fingerprint not in (self._fingerprint, self._refused)
            if not changed and (from_file is None or from_file == self.wanted.settings):
                continue
            if (fingerprint, from_file) == failed:
                continue
            failures = self.state.failures
            await self.reload("poll")
            failed = (fingerprint, from_file) if self.state.failures > failures else None

    async def _file_settings(self) -> Settings | None:
        """The settings a reload would read from the file; None without a file or when it is
        invalid (reported by the next SIGHUP; polling does not spam the log)."""
        if self._read_settings is None:
            return None
        try:
            new, _ = await asyncio.to_thread(self._settings_from_file)
        except ConfigError:
            return None
        return new
