"""The model repository (Triton's layout): `<repo>/<model>/<version>/model.onnx`.

Loading never stops at a broken model: each version ends READY or UNAVAILABLE with a reason
that names the file, and readiness reports the failures.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from router.errors import ConfigError, ModelNotFound, ModelNotReady
from router.inference import providers
from router.inference.graph_shapes import unranked_tensors
from router.inference.model_config import CONFIG_FILE, ModelConfig, load_model_config
from router.inference.runner import ModelRunner, RunnerLimits
from router.inference.sessions import LOADING_FOLDER, NO_EXTERNAL_DATA, all_providers

# Re-exported: app, generations, cli and the test kit import them from here.
from router.inference.sessions import SessionBuilder as SessionBuilder
from router.inference.sessions import available_providers as available_providers
from router.inference.sessions import default_session_builder as default_session_builder
from router.inference.signature import DYNAMIC, Signature, from_session
from router.inference.value_cost import sized_by_values
from router.settings import ModelSettings

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"


class State(StrEnum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class ModelVersion:
    model: str
    version: int
    path: Path
    config: ModelConfig = field(default_factory=ModelConfig)
    state: State = State.UNAVAILABLE
    reason: str = ""
    sha256: str = ""
    provider: str = ""
    provider_failures: list[providers.Attempt] = field(default_factory=list)
    signature: Signature | None = None
    runner: ModelRunner | None = None

    @property
    def ready(self) -> bool:
        return self.state is State.READY


@dataclass(slots=True)
class Model:
    name: str
    config: ModelConfig
    versions: dict[int, ModelVersion]
    error: str = ""  # a problem with the model as a whole (its config, no versions)

    @property
    def latest(self) -> ModelVersion | None:
        """The version a request naming none gets: the highest READY one, as Triton picks it
        (a broken new version must not take down the one that works), else the highest."""
        ready = [v for v, entry in self.versions.items() if entry.ready]
        if ready:
            return self.versions[max(ready)]
        return self.versions[max(self.versions)] if self.versions else None


class ModelRepository:
    def __init__(self, path: Path, models: dict[str, Model]) -> None:
        self.path = path
        self.models = models

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The requested version (the highest when None), ready to run."""
        entry = self.find(name, version)
        if not entry.ready or entry.runner is None:
            why = f": {entry.reason}" if entry.reason else ""
            raise ModelNotReady(
                f"model '{name}' version {entry.version} is not ready{why}", retry_after=5.0
            )
        return entry

    def find(self, name: str, version: str | None = None) -> ModelVersion:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model '{name}'")
        if version is None:
            latest = model.latest
            if latest is None:
                # The why (a config error naming file and key, no version folder) is the
                # operator's own text, never the client's: worth saying to the caller.
                why = f": {' '.join(model.error.split())}" if model.error else ""
                raise ModelNotReady(f"model '{name}' has no loadable version{why}", retry_after=5.0)
            return latest
        entry = model.versions.get(int(version)) if _is_number(version) else None
        if entry is None:
            raise ModelNotFound(f"model '{name}' has no version '{version}'")
        return entry

    def ready_here(self, name: str, version: str | None = None) -> bool:
        """Whether a request for `name` (at `version`, else the default one) can be run here:
        the version is loaded and ready."""
        model = self.models.get(name)
        if model is None:
            return False
        if version is None:
            entry = model.latest
        else:
            entry = model.versions.get(int(version)) if _is_number(version) else None
        return entry is not None and entry.ready

    @property
    def failures(self) -> list[str]:
        problems = [f"{m.name}: {m.error}" for m in self.models.values() if m.error]
        problems += [
            f"{v.model}/{v.version}: {v.reason}"
            for m in self.models.values()
            for v in m.versions.values()
            if not v.ready
        ]
        return problems

    @property
    def ready(self) -> bool:
        return not self.failures

    def carry_stats_from(self, before: ModelRepository) -> None:
        """Versions loaded again unchanged (same file, same config) keep counting where they
        were: a reload for another model must not reset their statistics (Prometheus counters
        going back without a restart), and requests still running on `before` count too."""
        for name, model in self.models.items():
            old_model = before.models.get(name)
            if old_model is None:
                continue
            for version, entry in model.versions.items():
                old = old_model.versions.get(version)
                if (
                    old is not None
                    and old.runner is not None
                    and entry.runner is not None
                    and old.sha256 == entry.sha256
                    and old.config == entry.config
                ):
                    entry.runner.stats = old.runner.stats

    def close(self) -> None:
        for model in self.models.values():
            for entry in model.versions.values():
                if entry.runner is not None:
                    entry.runner.close()


def _config_file(entry: ModelVersion) -> Path:
    return entry.path.parent.parent / CONFIG_FILE


def _check_label_output(entry: ModelVersion, config: ModelConfig, signature: Signature) -> None:
    """Labels aimed at an output the graph does not have would silently label nothing."""
    names = [spec.name for spec in signature.outputs]
    if config.label_output is not None and config.label_output not in names:
        raise ValueError(
            f"label_output in {_config_file(entry)}: the model has no output "
            f"'{config.label_output}' (outputs: {', '.join(names)})"
        )


@dataclass(frozen=True, slots=True)
class Loader:
    """Everything loading needs; tests swap `available` and `build` to exercise fallback."""

    settings: ModelSettings
    executor: Executor
    available: Sequence[str]
    build: SessionBuilder = default_session_builder
    # A warm-up of a model sized by values (a Loop with no trip count) stops after this long:
    # on zeros it might never end, and a load (a reload, holding the reload lock) with it.
    warmup_limit_s: float = 10.0

    def load(self, path: Path) -> ModelRepository:
        if not path.is_dir():
            raise ConfigError(str(path), ["model repository is not a directory"])
        models = {}
        try:
            folders = sorted(p for p in path.iterdir() if p.is_dir())
        except OSError as exc:  # a folder this user may not list
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(str(path), [f"model repository cannot be read: {reason}"]) from None
        for model_dir in folders:
            if model_dir.name.startswith((".", "_")):
                continue
            try:
                models[model_dir.name] = self._load_model(model_dir)
            except FileNotFoundError:
                # Removed while the models before it loaded (a reload runs as the operator
                # edits the repository): it is not part of the repository any more.
                log.info("model %s was removed while the repository loaded", model_dir.name)
        return ModelRepository(path, models)

    def _load_model(self, model_dir: Path) -> Model:
        name = model_dir.name
        try:
            config = load_model_config(model_dir)
        except ConfigError as exc:
            log.error("model %s not loaded: %s", name, exc)
            return Model(name, ModelConfig(), {}, error=str(exc))
        try:
            found = sorted(p for p in model_dir.iterdir() if p.is_dir() and _is_number(p.name))
        except FileNotFoundError:
            raise  # the folder went away: the repository's load leaves the model out
        except OSError as exc:  # this model's folder alone: the others still load
            reason = f"{model_dir} cannot be read: {exc.strerror or type(exc).__name__}"
            log.error("model %s not loaded: %s", name, reason)
            return Model(name, config, {}, error=reason)
        dirs: dict[int, list[Path]] = {}
        for folder in found:
            dirs.setdefault(int(folder.name), []).append(folder)
        if not dirs:
            return Model(name, config, {}, error=f"no numeric version folder in {model_dir}")
        versions = {
            v: self._load_version(name, v, folders[0], config)
            if len(folders) == 1
            else _ambiguous(name, v, folders, config)
            for v, folders in sorted(dirs.items())
        }
        return Model(name, config, versions)

    def _load_version(
        self, name: str, version: int, folder: Path, config: ModelConfig
    ) -> ModelVersion:
        entry = ModelVersion(name, version, folder / MODEL_FILE, config)
        try:
            self._prepare(entry, config)
        except Exception as exc:  # a broken model must never stop the others from loading
            entry.state, entry.reason = State.UNAVAILABLE, f"{entry.path}: {_reason(exc)}"
            log.error("model %s version %d not loaded: %s", name, version, entry.reason)
        return entry

    def _prepare(self, entry: ModelVersion, config: ModelConfig) -> None:
        data = entry.path.read_bytes()
        entry.sha256 = hashlib.sha256(data).hexdigest()
        pinned = config.sha256.get(entry.version)
        if pinned and pinned.lower() != entry.sha256:
            raise ValueError(f"sha256 {entry.sha256} does not match the pinned {pinned.lower()}")
        label = f"{entry.model}/{entry.version}"
        self._check_provider_names(entry, config)
        preferred = [
            providers.Candidate(p.name, dict(p.options)) for p in config.execution_providers
        ]
        choices = providers.candidates(preferred, self.available, self.settings.execution_providers)
        # A pin covers model.onnx only: a pinned version may not read weights from beside it
        # (they would run unverified), so its external data is looked for where none is.
        external = entry.path.parent / (NO_EXTERNAL_DATA if pinned else "")
        folder = LOADING_FOLDER.set(external)
        try:
            session, entry.provider, entry.provider_failures = providers.create_session(
                lambda chosen: self.build(data, config.intra_op_threads, chosen), choices, label
            )
        finally:
            LOADING_FOLDER.reset(folder)
        entry.signature = signature = from_session(session, lambda: unranked_tensors(data))
        _check_label_output(entry, config, signature)
        if config.max_batch_size and not signature.batchable:
            raise ValueError(
                "max_batch_size is set but not every tensor has an open first dimension"
            )
        limits = self._limits(config)
        if sized_by_values(data):
            # A few bytes could ask for any amount of work: never on the event loop, and a
            # run stopped at its deadline rather than holding a pool thread past it.
            limits = dataclasses.replace(limits, inline_max_ns=0, stop_at_deadline=True)
        entry.runner = ModelRunner(session, self.executor, limits, label)
        if config.warmup:
            self._warm_up(session, signature, label, entry.runner, limits.stop_at_deadline)
        entry.state = State.READY
        log.info("model %s loaded on %s (sha256 %s)", label, entry.provider, entry.sha256[:12])

    def _check_provider_names(self, entry: ModelVersion, config: ModelConfig) -> None:
        """A misspelt provider would otherwise be dropped like an absent one, and the model
        would run on CPU with nothing said."""
        known = set(all_providers()) | set(self.available)
        for choice in config.execution_providers:
            if choice.name not in known:
                raise ValueError(
                    f"execution_providers in {_config_file(entry)}: '{choice.name}' is not an "
                    "onnxruntime execution provider"
                )

    def _warm_up(
        self, session: Any, signature: Signature, label: str, runner: ModelRunner, bounded: bool
    ) -> None:
        """One run on zeros with open dimensions set to 1. Some graphs refuse such inputs
        (e.g. a padding that needs length >= 2); a model that loaded still serves, so a failed
        warm-up is only worth a warning. `bounded`: stopped after warmup_limit_s."""
        args: tuple[Any, ...] = ()
        alarm = None
        if bounded:
            import onnxruntime as ort  # loaded already: the session came from it

            options = ort.RunOptions()
            args = (options,)
            alarm = threading.Timer(self.warmup_limit_s, setattr, (options, "terminate", True))
            alarm.daemon = True
            alarm.start()
        try:
            feeds = warmup_feeds(signature)
            session.run(None, feeds, *args)  # the first run pays for lazy initialisation
            started = time.perf_counter_ns()
            session.run(None, feeds, *args)
            runner.measured(time.perf_counter_ns() - started, feeds)
        except Exception as exc:  # onnxruntime's errors share no base class we can name
            log.warning("model %s: warm-up run skipped (%s)", label, _reason(exc))
        finally:
            if alarm is not None:
                alarm.cancel()

    def _limits(self, config: ModelConfig) -> RunnerLimits:
        batching = config.dynamic_batching
        return RunnerLimits(
            max_batch_size=config.max_batch_size,
            max_queue_delay_s=batching.max_queue_delay_microseconds / 1e6,
            max_queue_size=batching.max_queue_size or self.settings.max_queue_size,
            instance_count=config.instance_count,
            inline_max_ns=self.settings.inline_max_us * 1000,
        )


def warmup_feeds(signature: Signature) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in signature.inputs:
        shape = tuple(1 if d == DYNAMIC else d for d in spec.reported_shape)
        if spec.datatype.is_bytes:
            feeds[spec.name] = np.full(shape, "", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=spec.datatype.numpy)
    return feeds


def _ambiguous(name: str, version: int, folders: list[Path], config: ModelConfig) -> ModelVersion:
    """A version two folders name ("1" and "01"): which one served would depend on the order
    the file system lists them in, so neither does."""
    entry = ModelVersion(name, version, folders[0] / MODEL_FILE, config)
    names = " and ".join(f"'{folder.name}'" for folder in folders)
    entry.reason = f"folders {names} in {folders[0].parent} both name version {version}"
    log.error("model %s version %d not loaded: %s", name, version, entry.reason)
    return entry


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() refuses."""
    return text.isascii() and text.isdecimal() and len(text) <= 18


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:500]
