"""The reloader's one-at-a-time build and swap: generations are built off the event loop, and a
bundle activation racing a config reload leaves both live, whichever order they interleave in."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _models import double_model, write_model

from router import reload as reload_module
from router.errors import BundleRejected, ConfigError
from router.inference.repository import Loader, ModelRepository, available_providers
from router.policy.bundle import PolicyBundle, load_bundle
from router.policy.keeper import BundleKeeper, BundleState
from router.policy.model import CustomPatternRule
from router.policy.source import Fetched
from router.policy.updater import BundleUpdater
from router.reload import Reloader
from router.runtime import Generation, Runtime
from router.settings import ModelSettings, Settings

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "policies" / "default"


def budget(ms: float, repository: Path | None = None) -> Settings:
    doc: dict[str, Any] = {"routing": {"kserve_v2_budget_ms": ms}}
    if repository is not None:
        doc["models"] = {"repository": repository}
    return Settings.model_validate(doc)


def revision(bundle: PolicyBundle, name: str) -> PolicyBundle:
    """A distinct bundle object (what an activation hands over) with its own revision."""
    manifest = bundle.manifest.model_copy(update={"revision": name})
    return dataclasses.replace(bundle, manifest=manifest)


def empty_matching(bundle: PolicyBundle) -> PolicyBundle:
    """A bundle RE2 and the schema accept but the detectors do not: its pattern matches ""."""
    rule = CustomPatternRule(name="EMPTY", pattern="x*", data_class="personal")
    detection = bundle.detection.model_copy(update={"custom": (rule,)})
    return dataclasses.replace(bundle, detection=detection)


class Source:
    """A bundle source that has `bundle` once (then nothing new)."""

    name = "test"

    def __init__(self) -> None:
        self.next: tuple[str, PolicyBundle] | None = None

    async def fetch(self, etag: str | None) -> Fetched | None:
        if self.next is None:
            return None
        name = self.next[0]
        return Fetched({"manifest.yaml": name.encode()}, b"", None)

    async def close(self) -> None:
        pass


class Keeper:
    """Accepts whatever the source sends: the bundle the test put there."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def accept(self, files: Any) -> tuple[PolicyBundle, None]:
        assert self.source.next is not None
        bundle = self.source.next[1]
        self.source.next = None
        return bundle, None

    def activated(self, bundle: PolicyBundle, content: str) -> None:
        pass  # no rollback guard here: these bundles carry no signature

    def superseded(self, bundle: PolicyBundle) -> bool:
        return False


class Site:
    """A real Reloader and Runtime; the generation build is a stand-in that takes a while in
    its thread (so builds and other tasks interleave) and records the threads it ran on."""

    def __init__(self, tmp_path: Path) -> None:
        self.bundle = load_bundle(DEFAULT_BUNDLE)
        self.config = budget(1000.0, tmp_path)
        self.models = ModelRepository(tmp_path, {})
        self.build_threads: list[int] = []
        self.load_started = threading.Event()
        self.load_may_finish = threading.Event()
        self.load_may_finish.set()
        self.fail_next_build = False
        self.load_error: OSError | None = None
        self.numbers = iter(range(2, 10_000))
        nothing: Any = None  # privacy and pipelines: not used by the reloader
        first = Generation(1, self.config, self.bundle, nothing, self.models, nothing)
        self.runtime = Runtime(first)
        self.source = Source()
        keeper: Any = Keeper(self.source)
        updater = BundleUpdater(
            self.source, keeper, BundleState("test", False), self.activate, persist=False
        )
        self.reloader = Reloader(self.runtime, updater, self.build, self.load, lambda: self.config)

    async def activate(self, bundle: PolicyBundle) -> None:
        await self.reloader.activate_bundle(bundle)

    def build(
        self, settings: Settings, bundle: PolicyBundle, models: ModelRepository, pending: bool
    ) -> Generation:
        self.build_threads.append(threading.get_ident())
        time.sleep(random.uniform(0, 0.003))
        if self.fail_next_build:
            self.fail_next_build = False
            raise ConfigError("build", ["failed on purpose"])
        nothing: Any = None
        return Generation(next(self.numbers), settings, bundle, nothing, models, nothing, pending)

    def load(self, settings: Settings) -> ModelRepository:
        self.load_started.set()
        assert self.load_may_finish.wait(10)
        if self.load_error is not None:
            error, self.load_error = self.load_error, None
            raise error
        assert settings.models.repository is not None
        return ModelRepository(settings.models.repository, {})


async def after(delay_s: float, work: Any) -> Any:
    await asyncio.sleep(delay_s)
    return await work


async def test_generations_are_built_off_the_event_loop_thread(tmp_path: Path) -> None:
    """Both a config reload and a bundle activation build their generation in another thread."""
    site = Site(tmp_path)
    await site.reloader.start()
    site.config = budget(900.0, tmp_path)
    assert await site.reloader.reload("test") is True
    await site.reloader.activate_bundle(revision(site.bundle, "r2"))
    assert len(site.build_threads) == 2
    assert threading.get_ident() not in site.build_threads
    assert site.runtime.current.bundle.revision == "r2"


async def test_an_activation_racing_a_reload_leaves_both_live(tmp_path: Path) -> None:
    """However a bundle activation and a config reload interleave (builds in threads, random
    delays), the final generation has the newest bundle and the newest settings."""
    site = Site(tmp_path)
    await site.reloader.start()
    rng = random.Random(7)
    for i in range(60):
        site.config = budget(500.0 + i, tmp_path)
        bundle = revision(site.bundle, f"r{i}")
        reload = after(rng.uniform(0, 0.004), site.reloader.reload("race"))
        activation = after(rng.uniform(0, 0.004), site.reloader.activate_bundle(bundle))
        pair = [reload, activation]
        rng.shuffle(pair)
        await asyncio.gather(*pair)
        current = site.runtime.current
        assert current.bundle is bundle, f"round {i}: the activated bundle was lost"
        assert current.settings.routing.kserve_v2_budget_ms == 500.0 + i, f"round {i}"
    assert site.reloader.state.failures == 0


async def test_a_bundle_activated_while_a_reload_loads_models_stays_live(tmp_path: Path) -> None:
    """A reload that picked up bundle r1 from the source and is still loading models does not
    put r1 back over r2, activated meanwhile: the reload's generation has r2 and its models."""
    site = Site(tmp_path)
    await site.reloader.start()
    r1, r2 = revision(site.bundle, "r1"), revision(site.bundle, "r2")
    site.source.next = ("r1", r1)
    other = tmp_path / "other"
    other.mkdir()
    site.config = budget(900.0, other)  # new repository: the reload loads models
    site.load_may_finish.clear()
    reload = asyncio.get_running_loop().create_task(site.reloader.reload("test"))
    assert await asyncio.to_thread(site.load_started.wait, 10)
    await site.reloader.activate_bundle(r2)
    site.load_may_finish.set()
    assert await reload is True
    current = site.runtime.current
    assert current.bundle is r2
    assert current.models.path == other
    assert current.settings.routing.kserve_v2_budget_ms == 900.0


async def test_a_failed_build_keeps_the_running_generation_and_the_next_reload_works(
    tmp_path: Path,
) -> None:
    """A build that fails leaves the running generation, counts a failure and wants nothing
    it could not build: the next reload goes live."""
    site = Site(tmp_path)
    await site.reloader.start()
    before = site.runtime.current
    site.config = budget(900.0, tmp_path)
    site.fail_next_build = True
    assert await site.reloader.reload("test") is False
    assert site.runtime.current is before
    assert site.reloader.state.failures == 1
    assert site.reloader.wanted.live_in(before)
    assert await site.reloader.reload("test") is True
    assert site.runtime.current.settings.routing.kserve_v2_budget_ms == 900.0


async def test_a_file_system_error_while_loading_models_is_a_failed_reload(
    tmp_path: Path,
) -> None:
    """An OSError while the models load (a folder removed or unreadable mid-load) fails that
    reload as a bad config does (counted, its reason kept, the generation running on), rather
    than escaping: the SIGHUP report said 'reloaded' and the polling task died of it."""
    site = Site(tmp_path)
    await site.reloader.start()
    before = site.runtime.current
    other = tmp_path / "other"
    other.mkdir()
    site.config = budget(1000.0, other)
    site.load_error = PermissionError(13, "Permission denied", str(other / "m"))
    assert await site.reloader.reload("test") is False
    assert site.runtime.current is before
    assert site.reloader.state.failures == 1
    assert "Permission denied" in (site.reloader.state.last_error or "")
    assert await site.reloader.reload("test") is True
    assert site.runtime.current.models.path == other


async def test_polling_outlives_a_folder_removed_while_the_repository_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model folder removed while a poll lists the repository (FileNotFoundError from the
    scan) is looked at again at the next poll: polling goes on and still sees later changes."""
    site = Site(tmp_path)
    await site.reloader.start()
    before = site.runtime.current
    real = reload_module.repository_fingerprint
    failures = [FileNotFoundError(2, "No such file or directory", str(tmp_path / "m" / "2"))]

    def racing(path: Path) -> str:
        if failures:
            raise failures.pop()
        return real(path)

    monkeypatch.setattr(reload_module, "repository_fingerprint", racing)
    (tmp_path / "new-model").mkdir()
    (tmp_path / "new-model" / "config.yaml").write_text("max_batch_size: 0\n")
    poll = asyncio.get_running_loop().create_task(site.reloader.poll(0.01))
    try:
        for _ in range(300):
            if site.runtime.current is not before or poll.done():
                break
            await asyncio.sleep(0.01)
        assert not poll.done()
        assert site.runtime.current is not before
        assert not failures
    finally:
        poll.cancel()
        await asyncio.gather(poll, return_exceptions=True)


class RealModels(Site):
    """A Site whose reloads load the repository with the real Loader."""

    def __init__(self, tmp_path: Path, pool: ThreadPoolExecutor) -> None:
        super().__init__(tmp_path)
        self.pool = pool

    def load(self, settings: Settings) -> ModelRepository:
        assert settings.models.repository is not None
        loader = Loader(ModelSettings(inference_threads=1), self.pool, available_providers())
        return loader.load(settings.models.repository)


async def test_a_version_loaded_again_unchanged_keeps_its_statistics(tmp_path: Path) -> None:
    """A reload for another model leaves an unchanged version's statistics counting on (its
    Prometheus counters do not go back); a version whose file changed starts afresh."""
    with ThreadPoolExecutor(1) as pool:
        site = RealModels(tmp_path, pool)
        await site.reloader.start()
        write_model(tmp_path, "kept", 1, double_model())
        write_model(tmp_path, "changed", 1, double_model())
        assert await site.reloader.reload("test") is True
        first = site.runtime.current.models
        for name in ("kept", "changed"):
            runner = first.get(name).runner
            assert runner is not None
            await runner.infer({"x": np.ones((2, 2), dtype=np.float32)}, 1e12)
        write_model(tmp_path, "changed", 1, double_model(("N", "D", "E")))
        assert await site.reloader.reload("test") is True
        second = site.runtime.current.models
        assert second is not first
        kept, changed = second.get("kept").runner, second.get("changed").runner
        assert kept is not None
        assert changed is not None
        assert kept is not first.get("kept").runner
        assert kept.stats.success.count == 1
        assert changed.stats.success.count == 0
        first.close()
        second.close()


async def test_a_bundle_whose_patterns_do_not_compile_changes_nothing(tmp_path: Path) -> None:
    """An activated bundle with a custom pattern RE2 accepts but the detectors refuse (it
    matches the empty string) is a ConfigError before anything is wanted or built."""
    site = Site(tmp_path)
    await site.reloader.start()
    with pytest.raises(ConfigError, match="empty string"):
        await site.reloader.activate_bundle(empty_matching(site.bundle))
    assert site.reloader.wanted.bundle is site.bundle
    assert site.build_threads == []


async def test_an_activation_that_fails_is_a_rejection_and_polling_goes_on(tmp_path: Path) -> None:
    """A bundle the reloader cannot build is counted as rejected by the updater (the poll does
    not die of it) and the running bundle stays."""
    site = Site(tmp_path)
    await site.reloader.start()
    site.source.next = ("bad", empty_matching(site.bundle))
    assert await site.reloader.updater.check() is False
    state = site.reloader.updater.state
    assert state.rejections == 1
    assert "empty string" in (state.last_error or "")
    assert site.runtime.current.bundle is site.bundle
    site.source.next = ("good", revision(site.bundle, "good"))
    assert await site.reloader.updater.check() is True
    assert site.runtime.current.bundle.revision == "good"


def test_the_keeper_rejects_a_bundle_whose_patterns_do_not_compile(tmp_path: Path) -> None:
    """The keeper compiles a bundle's detectors when it accepts it: a custom pattern matching
    the empty string is a rejection naming detection.yaml, before any activation."""
    files = {
        str(path.relative_to(DEFAULT_BUNDLE)): path.read_bytes()
        for path in DEFAULT_BUNDLE.rglob("*")
        if path.is_file()
    }
    files["detection.yaml"] = b"custom: [{name: EMPTY, pattern: 'x*', data_class: personal}]\n"
    with pytest.raises(BundleRejected, match=r"detection\.yaml: custom: .*empty string"):
        BundleKeeper({}, tmp_path).accept(files)


@pytest.mark.parametrize(
    ("file", "content"),
    [
        ("detection.yaml", b"custom: [{name: BAD, pattern: '(', data_class: personal}]\n"),
        ("tenants.yaml", b"tenants: {a: {data_class: nonesuch}}\n"),
    ],
)
def test_a_rejected_bundle_leaves_no_folder_in_the_store(
    tmp_path: Path, file: str, content: bytes
) -> None:
    """The keeper writes a bundle's verified files to a folder of its own before loading
    them; one that fails to load left that folder behind for good (one per rejected edit of
    a local bundle); an accepted one keeps its folder."""
    files = {
        str(path.relative_to(DEFAULT_BUNDLE)): path.read_bytes()
        for path in DEFAULT_BUNDLE.rglob("*")
        if path.is_file()
    }
    keeper = BundleKeeper({}, tmp_path)
    good, _ = keeper.accept(files)
    with pytest.raises(BundleRejected):
        keeper.accept({**files, file: content})
    assert [p.name for p in tmp_path.glob("bundle-*")] == [good.path.name]


async def test_an_unexpected_failure_is_a_rejection_and_polling_goes_on(tmp_path: Path) -> None:
    """A generation build failing with something other than a config error (a bug, a full
    disk) escaped the updater: the bundle source's poll task ended for good and the site never
    took another bundle; it is counted as a rejection, the old bundle stays, and the next
    good bundle is activated."""
    site = Site(tmp_path)
    await site.reloader.start()
    updater = site.reloader.updater

    def broken(*_args: Any) -> Generation:
        raise RuntimeError("unexpected")

    build, site.reloader._build = site.reloader._build, broken
    site.source.next = ("bad", revision(site.bundle, "bad"))
    assert await updater.check() is False
    assert updater.state.rejections == 1
    assert "RuntimeError" in (updater.state.last_error or "")
    assert site.runtime.current.bundle is site.bundle
    site.reloader._build = build
    site.source.next = ("good", revision(site.bundle, "good"))
    assert await updater.check() is True
    assert site.runtime.current.bundle.revision == "good"


async def test_a_reload_failing_unexpectedly_is_reported_as_failed(tmp_path: Path) -> None:
    """A reload whose generation build fails with something other than a config error
    escaped reload(): SIGHUP's report found no error and printed 'reloaded'; it is a failed
    reload (counted, last_error set) and the running generation stays."""
    site = Site(tmp_path)
    await site.reloader.start()
    site.config = budget(2000.0, tmp_path)

    def broken(*_args: Any) -> Generation:
        raise RuntimeError("unexpected")

    before = site.runtime.current
    site.reloader._build = broken
    assert await site.reloader.reload("test") is False
    assert site.reloader.state.failures == 1
    assert "RuntimeError" in (site.reloader.state.last_error or "")
    assert site.runtime.current is before


async def test_a_bundle_fetched_by_a_reload_whose_models_fail_unexpectedly_goes_live(
    tmp_path: Path,
) -> None:
    """A reload that took a new bundle from the source and then failed loading models with
    an unforeseen error left that bundle wanted but never applied, while the updater called it
    active (not fetched again): the old rules served on until some later reload. It is applied
    alone, as it is when the models fail with a config or file system error."""
    site = Site(tmp_path)
    await site.reloader.start()
    r1 = revision(site.bundle, "r1")
    site.source.next = ("r1", r1)
    other = tmp_path / "other"
    other.mkdir()
    site.config = budget(1000.0, other)  # new repository: the reload loads models
    error: Any = RuntimeError("unforeseen")
    site.load_error = error
    assert await site.reloader.reload("test") is False
    assert "RuntimeError" in (site.reloader.state.last_error or "")
    assert site.runtime.current.bundle is r1
