"""A real router's hot reload does its heavy work off the event loop (a bundle's new detectors
are compiled, and each new generation built, in other threads), and a bundle activation racing
a config reload leaves both live."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from router.api.state import RELOADER, RUNTIME
from router.policy.bundle import PolicyBundle, load_bundle
from router.policy.model import CustomPatternRule
from router.privacy import Privacy
from router.redaction.detectors import Detectors
from router.settings import Settings
from router.testing import RouterThread

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "policies" / "default"


class Threads:
    """Records the thread each call of a wrapped function ran on."""

    def __init__(self) -> None:
        self.compile: list[int] = []
        self.privacy: list[int] = []

    def spy(self, monkeypatch: pytest.MonkeyPatch) -> None:
        default, build = Detectors.default, Privacy.build

        def compiling(custom: Any = ()) -> Detectors:
            self.compile.append(threading.get_ident())
            return default(custom)

        def building(*args: Any, **kwargs: Any) -> Privacy:
            self.privacy.append(threading.get_ident())
            return build(*args, **kwargs)

        monkeypatch.setattr(Detectors, "default", compiling)
        monkeypatch.setattr(Privacy, "build", building)


def with_employee_ids(bundle: PolicyBundle) -> PolicyBundle:
    # A pattern no other test compiles: the detectors' memo cannot already hold it.
    rule = CustomPatternRule(name="OFF_LOOP_ID", pattern="OFFLOOP-[0-9]{6}", data_class="personal")
    detection = bundle.detection.model_copy(update={"custom": (rule,)})
    return dataclasses.replace(bundle, detection=detection)


def test_activation_and_reload_build_off_the_loop_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundle with a new custom pattern is compiled and built outside the loop thread, so is
    a config reload's generation; the pattern is live afterwards."""
    config = {"now": Settings()}
    threads = Threads()
    with RouterThread(config["now"], read_settings=lambda: config["now"]) as site:
        assert site.app is not None
        app = site.app
        loop_thread = site.call(threading.get_ident)
        threads.spy(monkeypatch)
        bundle = with_employee_ids(load_bundle(DEFAULT_BUNDLE))
        site.call_async(app[RELOADER].activate_bundle, bundle)
        config["now"] = Settings.model_validate({"routing": {"kserve_v2_budget_ms": 900}})
        assert site.call_async(app[RELOADER].reload, "test") is True

        def live() -> tuple[PolicyBundle, float, list[str]]:
            current = app[RUNTIME].current
            _, findings = current.privacy.detectors.scan("badge OFFLOOP-123456 here")
            budget = current.settings.routing.kserve_v2_budget_ms
            return current.bundle, budget, [f.entity for f in findings]

        assert site.call(live) == (bundle, 900, ["OFF_LOOP_ID"])
    assert len(threads.compile) == 1
    assert len(threads.privacy) == 2
    assert loop_thread not in threads.compile + threads.privacy


async def after(delay_s: float, work: Awaitable[None]) -> None:
    await asyncio.sleep(delay_s)
    await work


def test_activations_racing_config_reloads_in_a_real_router_leave_both_live() -> None:
    """Thirty rounds of a bundle activation and a config reload started a few random ms apart,
    in either order: each round's generation has that round's bundle and settings."""
    config = {"now": Settings()}
    bundle = load_bundle(DEFAULT_BUNDLE)
    rng = random.Random(11)
    with RouterThread(config["now"], read_settings=lambda: config["now"]) as site:
        assert site.app is not None
        reloader, runtime = site.app[RELOADER], site.app[RUNTIME]

        async def race(round_: int) -> tuple[str, float]:
            budget = {"routing": {"kserve_v2_budget_ms": 500 + round_}}
            config["now"] = Settings.model_validate(budget)
            manifest = bundle.manifest.model_copy(update={"revision": f"r{round_}"})
            activation = reloader.activate_bundle(dataclasses.replace(bundle, manifest=manifest))
            reload = reloader.reload("race")
            await asyncio.gather(
                after(rng.uniform(0, 0.006), activation), after(rng.uniform(0, 0.006), reload)
            )
            current = runtime.current
            return current.bundle.revision, current.settings.routing.kserve_v2_budget_ms

        for round_ in range(30):
            assert site.call_async(race, round_) == (f"r{round_}", 500 + round_)
