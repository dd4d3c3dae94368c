"""How long a hot reload blocks the event loop: the longest loop stall seen while a router
reloads, per kind of reload (a changed config, a new bundle with the same detection patterns,
a new bundle with a new custom pattern, a bundle activation racing a config reload).

A watcher task sleeps 1 ms at a time on the router's loop and records how late it wakes; the
stall of one reload is the worst lateness between its start and 20 ms after it returned. Run it
against another version of the package with PYTHONPATH (e.g. a `git archive` snapshot):
  PYTHONPATH=/tmp/before python bench/reload_stall.py --repeats 40
Prints a markdown table (median, p90 and max of the per-reload stalls, in ms) and the idle
watcher's worst lateness as the noise floor of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from router.api.state import RELOADER
from router.policy.bundle import PolicyBundle, load_bundle
from router.policy.model import CustomPatternRule
from router.settings import Settings
from router.testing import RouterThread

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "policies" / "default"
TICK_S = 0.001
TAIL_S = 0.02  # a stall just after a reload returned (a swap listener, a retirement) counts


class Watcher:
    """The worst lateness of a 1 ms sleep since the last reset."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(TICK_S)
            self.worst = max(self.worst, loop.time() - before - TICK_S)


def settings_with_budget(budget_ms: float) -> Settings:
    return Settings.model_validate({"routing": {"kserve_v2_budget_ms": budget_ms}})


def with_custom(bundle: PolicyBundle, number: int | None) -> PolicyBundle:
    """A copy (a new bundle to activate); `number`: with a custom pattern of its own."""
    custom = (
        ()
        if number is None
        else (
            CustomPatternRule(
                name=f"BENCH_{number}", pattern=f"BENCH-{number}-[0-9]{{6}}", data_class="personal"
            ),
        )
    )
    detection = bundle.detection.model_copy(update={"custom": custom})
    return dataclasses.replace(bundle, detection=detection)


async def measure(
    site: RouterThread, repeats: int, config: dict[str, Settings]
) -> dict[str, list[float]]:
    assert site.app is not None
    reloader = site.app[RELOADER]
    bundle = load_bundle(DEFAULT_BUNDLE)
    budgets = itertools.cycle([900.0, 1000.0])
    numbers = itertools.count()

    async def config_reload() -> None:
        config["now"] = settings_with_budget(next(budgets))
        await reloader.reload("bench")

    async def same_patterns() -> None:
        await reloader.activate_bundle(with_custom(bundle, None))

    async def new_pattern() -> None:
        await reloader.activate_bundle(with_custom(bundle, next(numbers)))

    async def racing() -> None:
        config["now"] = settings_with_budget(next(budgets))
        await asyncio.gather(
            reloader.reload("bench"), reloader.activate_bundle(with_custom(bundle, None))
        )

    scenarios: dict[str, Callable[[], Awaitable[None]]] = {
        "config reload": config_reload,
        "bundle, same patterns": same_patterns,
        "bundle, new custom pattern": new_pattern,
        "bundle + config racing": racing,
    }
    watcher = Watcher()
    task = asyncio.get_running_loop().create_task(watcher.run())
    stalls: dict[str, list[float]] = {name: [] for name in ["idle", *scenarios]}
    try:
        await asyncio.sleep(0.1)
        for _ in range(repeats):
            watcher.worst = 0.0
            await asyncio.sleep(0.05)
            stalls["idle"].append(watcher.worst)
            for name, scenario in scenarios.items():
                await asyncio.sleep(0.01)
                watcher.worst = 0.0
                await scenario()
                await asyncio.sleep(TAIL_S)
                stalls[name].append(watcher.worst)
    finally:
        task.cancel()
    return stalls


def report(stalls: dict[str, list[float]]) -> str:
    lines = ["| reload | median ms | p90 ms | max ms |", "|---|---:|---:|---:|"]
    for name, values in stalls.items():
        ms = sorted(v * 1000 for v in values)
        p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
        lines.append(f"| {name} | {statistics.median(ms):.2f} | {p90:.2f} | {ms[-1]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    config = {"now": settings_with_budget(1000.0)}
    started = time.perf_counter()
    with RouterThread(
        config["now"], read_settings=lambda: config["now"], start_timeout_s=120
    ) as site:
        stalls = site.call_async(measure, site, args.repeats, config)
    print(report(stalls))
    print(f"\n{args.repeats} repeats in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
