"""Hot reload: on SIGHUP, by polling, or when a new policy bundle arrives, build a new runtime
generation (settings, bundle, privacy, models, pipelines) and swap it in; requests in flight
finish on the old one. Settings that need a restart are reported and left as they were."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from router.errors import ConfigError
from router.inference.repository import ModelRepository
from router.policy.bundle import PolicyBundle
from router.policy.updater import BundleUpdater
from router.resources import demo_model_repository
from router.runtime import Generation, Runtime
from router.settings import Settings

log = logging.getLogger(__name__)

# Everything else needs a restart: listeners, workers, stores (cache, spool, audit), the policy
# source and keys. The policy's content reloads from the configured source.
RELOADABLE: dict[str, tuple[str, ...]] = {
    "routing": (
        "kserve_v2_budget_ms",
        "openai_budget_ms",
        "local_max_payload_bytes",
        "idempotent_paths",
        "offline",
        "models",
    ),
    "models": ("repository", "max_queue_size", "inline_max_us", "execution_providers"),
}
# Sections replaced whole: the upstream registry re-plans its clusters (a reload hook).
RELOADABLE_SECTIONS = frozenset({"upstreams"})

# Built elsewhere (router.app): a generation from settings, a bundle and models.
BuildGeneration = Callable[[Settings, PolicyBundle, ModelRepository, bool], Generation]
LoadModels = Callable[[Settings], ModelRepository]  # blocking
# Plug-ins told about every reload with the new settings (e.g. TLS material re-read).
ReloadHook = Callable[[Settings], Awaitable[None]]


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


def restart_only_changes(running: Settings, new: Settings) -> list[str]:
    """Dotted keys that differ between `running` and `new` and need a restart to apply."""
    old_doc, new_doc = running.model_dump(mode="json"), new.model_dump(mode="json")
    changed = []
    for section in sorted(old_doc.keys() | new_doc.keys()):
        a, b = old_doc.get(section), new_doc.get(section)
        if a == b or section in RELOADABLE_SECTIONS:
            continue
        reloadable = RELOADABLE.get(section, ())
        if not isinstance(a, dict) or not isinstance(b, dict):
            changed.append(section)
            continue
        changed += [
            f"{section}.{key}"
            for key in sorted(a.keys() | b.keys())
            if key not in reloadable and a.get(key) != b.get(key)
        ]
    return changed


def applied(running: Settings, new: Settings) -> Settings:
    """`running` with the reloadable keys of `new`."""
    update: dict[str, Any] = {section: getattr(new, section) for section in RELOADABLE_SECTIONS}
    for section, keys in RELOADABLE.items():
        values = {key: getattr(getattr(new, section), key) for key in keys}
        update[section] = getattr(running, section).model_copy(update=values)
    return running.model_copy(update=update)


def repository_fingerprint(path: Path) -> str:
    """Names, sizes and modification times of every file: cheap, and changes when a model
    file is replaced or a version added."""
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file():
            stat = file.stat()
            digest.update(
                f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()


class Reloader:
    def __init__(
        self,
        runtime: Runtime,
        updater: BundleUpdater,
        build: BuildGeneration,
        load_models: LoadModels,
        read_settings: Callable[[], Settings] | None,
    ) -> None:
        self.runtime = runtime
        self.updater = updater
        self.state = ReloadState()
        self.hooks: list[ReloadHook] = []
        self._build = build
        self._load_models = load_models
        self._read_settings = read_settings
        self._started = runtime.current.settings
        self._fingerprint = ""
        self._refused = ""  # a repository state that failed to load: polls do not retry it
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._fingerprint = await asyncio.to_thread(self._models_fingerprint, self._started)

    async def activate_bundle(self, bundle: PolicyBundle) -> None:
        """A new good bundle: the same settings and models under new rules."""
        current = self.runtime.current
        self._swap(self._build(current.settings, bundle, current.models, False))

    def _swap(self, generation: Generation) -> None:
        self.runtime.swap(generation)
        self.state.generation = generation.number

    async def reload(self, reason: str) -> bool:
        """Re-read config, bundle and models; True when a new generation went live."""
        async with self._lock:
            self.state.reloads += 1
            self.state.last_reload = time.time()
            try:
                swapped = await self._reload()
            except ConfigError as exc:
                self.state.failures += 1
                self.state.last_error = str(exc)
                log.error(
                    "reload (%s) failed; still serving generation %d: %s",
                    reason,
                    self.runtime.current.number,
                    exc,
                )
                return False
            self.state.last_error = None
            log.info("reload (%s): generation %d", reason, self.runtime.current.number)
            return swapped

    async def _reload(self) -> bool:
        current = self.runtime.current
        settings = current.settings
        if self._read_settings is not None:
            new = await asyncio.to_thread(self._read_settings)
            self.state.restart_required = restart_only_changes(self._started, new)
            for key in self.state.restart_required:
                log.warning("setting %s changed: it takes effect only after a restart", key)
            settings = applied(self._started, new)
        fresh: list[PolicyBundle] = []

        async def hold(bundle: PolicyBundle) -> None:
            fresh.append(bundle)  # applied below, in the same generation as the models

        await self.updater.check(activate=hold)
        try:
            models = await self._models_for(settings)
        except ConfigError:
            if fresh:  # the bundle is good even when the models are not: apply it alone
                await self.activate_bundle(fresh[-1])
            raise
        current = self.runtime.current
        bundle = fresh[-1] if fresh else current.bundle
        changed = bool(fresh) or models is not current.models or settings != current.settings
        if changed:
            self._swap(self._build(settings, bundle, models, current.pending and not fresh))
        for hook in self.hooks:
            try:
                await hook(settings)
            except Exception as exc:  # a plug-in's failure must not undo the reload
                log.error("reload hook %s failed: %s", getattr(hook, "__name__", hook), exc)
        return changed

    async def _models_for(self, settings: Settings) -> ModelRepository:
        current = self.runtime.current
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
        return models

    @staticmethod
    def _models_fingerprint(settings: Settings) -> str:
        path = settings.models.repository or demo_model_repository()
        return repository_fingerprint(path) if path.is_dir() else ""

    async def poll(self, interval_s: float) -> None:
        """Reload whenever the config file or the model repository changed."""
        while True:
            await asyncio.sleep(interval_s)
            settings = self.runtime.current.settings
            fingerprint = await asyncio.to_thread(self._models_fingerprint, settings)
            changed = fingerprint not in (self._fingerprint, self._refused)
            if changed or await self._config_changed():
                await self.reload("poll")

    async def _config_changed(self) -> bool:
        if self._read_settings is None:
            return False
        try:
            new = await asyncio.to_thread(self._read_settings)
        except ConfigError:
            return False  # reported by the next SIGHUP; polling does not spam the log
        return applied(self._started, new) != self.runtime.current.settings
