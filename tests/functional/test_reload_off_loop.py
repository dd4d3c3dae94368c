"""A real router's hot reload does its heavy work off the event loop: the detectors of a bundle
with new patterns are compiled, and each new generation's privacy built, in other threads."""

from __future__ import annotations

import dataclasses
import threading
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
