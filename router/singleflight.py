"""Single-flight: concurrent identical requests share one execution.

The shared work runs in a task of its own, so a caller that goes away (even the first one)
cancels only its own wait; the others still get the answer, or the same error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: Hashable) -> bool:
        """Whether a flight for `key` is under way (a `run` now would join it)."""
        return key in self._flights

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The work's result, and whether it was another caller's flight that produced it."""
        task = self._flights.get(key)
        joined = task is not None
        if task is None:
            task = asyncio.get_running_loop().create_task(_call(work))
            self._flights[key] = task
            task.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(task), joined

    def _landed(self, key: Hashable, task: asyncio.Task[T]) -> None:
        self._flights.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: when every waiter left, nobody else will


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    return await work()
