"""Single-flight: concurrent identical requests share one execution.

The shared work runs in a task of its own, so a caller that goes away (even the first one)
cancels only its own wait; the others still get the answer, or the same error. When the last
caller has gone the work is cancelled: nobody would see its answer, and a queued inference
whose clients all left must not run (the leader's answer is only kept by the leader).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Flight(Generic[T]):
    task: asyncio.Task[T]
    waiters: int = 0


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: Hashable) -> bool:
        """Whether a flight for `key` is under way (a `run` now would join it)."""
        return key in self._flights

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The work's result, and whether it was another caller's flight that produced it."""
        flight = self._flights.get(key)
        joined = flight is not None
        if flight is None:
            task = asyncio.get_running_loop().create_task(_call(work))
            flight = self._flights[key] = _Flight(task)
            task.add_done_callback(lambda done: self._landed(key, done))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task), joined
        finally:
            flight.waiters -= 1
            if not flight.waiters and not flight.task.done():
                self._abandon(key, flight)

    def _abandon(self, key: Hashable, flight: _Flight[T]) -> None:
        # A caller arriving from now on starts afresh instead of joining a cancelled flight.
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.task.cancel()

    def _landed(self, key: Hashable, task: asyncio.Task[T]) -> None:
        flight = self._flights.get(key)
        if flight is not None and flight.task is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: when every waiter left, nobody else will


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    return await work()
