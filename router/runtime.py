"""The runtime generation: everything a request is served with that a reload may replace
(settings, policy bundle, privacy machinery, models, pipelines), as one immutable value.

A reload builds a new generation and swaps it in at one place. Each request pins the generation
current when it arrives and is served by it to the end; an old generation's models are closed
only when its last request has finished (or the drain timeout has passed)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from router.inference.repository import ModelRepository
from router.pipeline import Pipeline
from router.policy.bundle import PolicyBundle
from router.privacy import Privacy
from router.settings import Settings
from router.tenancy import Tenancy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pipelines:
    v2_infer: Pipeline
    openai: Pipeline
    upstream_only: Pipeline  # requests about a model only upstreams hold (v2 metadata, ready)
    tenancy: Tenancy | None = None  # the pipelines' tenants, for routes outside a pipeline


@dataclass(slots=True, eq=False)
class Generation:
    number: int
    settings: Settings
    bundle: PolicyBundle
    privacy: Privacy
    models: ModelRepository
    pipelines: Pipelines
    # No good policy bundle yet (a remote source not reached): requests get 503.
    pending: bool = False
    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def finished(self, timeout_s: float) -> bool:
        """True when no request is using this generation, waiting up to `timeout_s`."""
        if self.in_flight == 0:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


class Runtime:
    """Holds the current generation; retires replaced ones once their requests are done."""

    def __init__(self, first: Generation) -> None:
        self.current = first
        self.swaps = 0
        # Called with each new generation as it goes live (e.g. to hand on its privacy).
        self.listeners: list[Callable[[Generation], None]] = []
        # Replaced generations whose models live on in a newer one: their requests may still
        # be running when those models are replaced in turn.
        self._replaced: list[Generation] = []
        self._retiring: set[asyncio.Task[None]] = set()

    def swap(self, new: Generation) -> Generation:
        old, self.current = self.current, new
        self.swaps += 1
        for listener in self.listeners:
            listener(new)
        if old.models is new.models:
            self._replaced = [g for g in self._replaced if g.in_flight] + [old]
            return old
        sharing = [g for g in self._replaced if g.models is old.models] + [old]
        self._replaced = [g for g in self._replaced if g.models is not old.models]
        task = asyncio.get_running_loop().create_task(self._retire(sharing))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return old

    async def _retire(self, generations: list[Generation]) -> None:
        """Close the models these generations share once all their requests have finished
        (or the drain timeout has passed)."""
        last = generations[-1]
        drain = last.settings.server.drain_timeout_s
        deadline = asyncio.get_running_loop().time() + drain
        for generation in generations:
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            if not await generation.finished(left):
                log.warning(
                    "generation %d: %d requests still running after %.1f s; closing its models",
                    generation.number,
                    generation.in_flight,
                    drain,
                )
        last.models.close()  # cancels the runners' timers and queues: loop work

    async def close(self) -> None:
        await asyncio.gather(*self._retiring, return_exceptions=True)
        self.current.models.close()
