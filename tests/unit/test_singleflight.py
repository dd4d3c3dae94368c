"""router/singleflight.py: concurrent identical calls share one execution, its result and its
error; a caller that leaves cancels only its own wait, and the last one to leave the work."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from router.singleflight import SingleFlight

LIMIT_S = 5.0  # every wait in these tests; none comes near it when the code is right


class Work:
    """Work that counts its runs and finishes only when released (or fails, if told to)."""

    def __init__(self, result: Any = "answer", error: BaseException | None = None) -> None:
        self.result = result
        self.error = error
        self.runs = 0
        self.finished = 0
        self.release = asyncio.Event()

    async def __call__(self) -> Any:
        self.runs += 1
        await self.release.wait()
        self.finished += 1
        if self.error is not None:
            raise self.error
        return self.result


Outcome = tuple[Any, bool] | Exception  # what run() returned, or what it raised


class Callers:
    """Tasks (in a TaskGroup) calling `flight.run(key, work)`; `joined()` waits until every
    one of them has joined. A caller's exception is its outcome, so the group never aborts."""

    def __init__(self, flight: SingleFlight[Any], group: asyncio.TaskGroup) -> None:
        self.flight = flight
        self.group = group
        self.entered = 0
        self.tasks: list[asyncio.Task[Outcome]] = []
        self._all_in = asyncio.Event()

    def start(self, key: str, work: Callable[[], Awaitable[Any]], n: int = 1) -> None:
        self._all_in.clear()
        for _ in range(n):
            self.tasks.append(self.group.create_task(self._call(key, work)))

    async def _call(self, key: str, work: Callable[[], Awaitable[Any]]) -> Outcome:
        self.entered += 1
        if self.entered == len(self.tasks):
            self._all_in.set()
        # run() registers (or joins) the flight before its first await, so a caller that
        # has entered has joined by the time anyone else runs.
        try:
            return await self.flight.run(key, work)
        except Exception as exc:
            return exc

    async def joined(self) -> None:
        await self._all_in.wait()

    def outcomes(self, skip: int | None = None) -> list[Outcome]:
        return [task.result() for i, task in enumerate(self.tasks) if i != skip]

    def results(self, skip: int | None = None) -> list[tuple[Any, bool]]:
        """Every (result, joined) pair; a caller that raised fails the test here."""
        outcomes = self.outcomes(skip)
        assert all(isinstance(outcome, tuple) for outcome in outcomes), outcomes
        return [outcome for outcome in outcomes if isinstance(outcome, tuple)]


@contextlib.asynccontextmanager
async def calling(flight: SingleFlight[Any]) -> AsyncIterator[Callers]:
    """Callers whose tasks all end (bounded) when the block does."""
    async with asyncio.timeout(LIMIT_S), asyncio.TaskGroup() as group:
        yield Callers(flight, group)


async def landed(flight: SingleFlight[Any]) -> None:
    """Let a finished flight's done-callbacks run (a few loop turns)."""
    for _ in range(20):
        if not len(flight):
            return
        await asyncio.sleep(0)
    raise AssertionError("the flight never landed")


@pytest.fixture
async def unhandled() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the loop's exception handler (e.g. 'Task exception was never retrieved')."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


class TestSingleFlight:
    async def test_concurrent_identical_keys_run_once_and_share_the_result(self) -> None:
        """Twenty callers of one key: one execution, one result object for all, one leader."""
        flight: SingleFlight[Any] = SingleFlight()
        result = {"answer": 42}
        work = Work(result)
        async with calling(flight) as callers:
            callers.start("k", work, n=20)
            await callers.joined()
            assert len(flight) == 1
            work.release.set()
        results = callers.results()
        assert work.runs == 1
        assert all(value is result for value, _ in results)
        assert [joined for _, joined in results] == [False] + [True] * 19
        await landed(flight)

    async def test_a_key_in_flight_is_known_until_it_lands(self) -> None:
        """`key in flight` says whether a call now would join a running one."""
        flight: SingleFlight[Any] = SingleFlight()
        work = Work()
        async with calling(flight) as callers:
            assert "k" not in flight
            callers.start("k", work, n=1)
            await callers.joined()
            assert "k" in flight
            assert "other" not in flight
            work.release.set()
        await landed(flight)
        assert "k" not in flight

    async def test_different_keys_run_separately(self) -> None:
        """Each key has its own flight, result and leader."""
        flight: SingleFlight[Any] = SingleFlight()
        first, second = Work("one"), Work("two")
        async with calling(flight) as callers:
            callers.start("a", first, n=3)
            callers.start("b", second, n=3)
            await callers.joined()
            assert len(flight) == 2
            first.release.set()
            second.release.set()
        assert (first.runs, second.runs) == (1, 1)
        assert callers.results() == [
            ("one", False),
            ("one", True),
            ("one", True),
            ("two", False),
            ("two", True),
            ("two", True),
        ]

    async def test_an_exception_reaches_every_waiter(self) -> None:
        """A failed execution fails every caller with the same exception, run once."""
        flight: SingleFlight[Any] = SingleFlight()
        error = RuntimeError("upstream went away")
        work = Work(error=error)
        async with calling(flight) as callers:
            callers.start("k", work, n=5)
            await callers.joined()
            work.release.set()
        assert work.runs == 1
        assert all(outcome is error for outcome in callers.outcomes())
        await landed(flight)

    @pytest.mark.parametrize("leaver", [0, 2], ids=["first-caller", "a-follower"])
    async def test_one_waiter_leaving_cancels_neither_the_work_nor_the_others(
        self, leaver: int
    ) -> None:
        """A cancelled caller (even the one that started the work) gets CancelledError; the
        work finishes once and every other caller still gets its result."""
        flight: SingleFlight[Any] = SingleFlight()
        work = Work("answer")
        async with calling(flight) as callers:
            callers.start("k", work, n=4)
            await callers.joined()
            callers.tasks[leaver].cancel()
            with pytest.raises(asyncio.CancelledError):
                await callers.tasks[leaver]
            assert len(flight) == 1  # still running for the others
            work.release.set()
        assert (work.runs, work.finished) == (1, 1)
        assert [value for value, _ in callers.results(skip=leaver)] == ["answer"] * 3

    async def test_the_work_is_cancelled_when_every_waiter_left(self) -> None:
        """With every caller gone the work is cancelled (a queued inference nobody waits for
        must not run); a caller arriving afterwards starts a flight of its own."""
        flight: SingleFlight[Any] = SingleFlight()
        work = Work("answer")
        async with calling(flight) as callers:
            callers.start("k", work, n=3)
            await callers.joined()
            for task in callers.tasks:
                task.cancel()
            await asyncio.wait(callers.tasks)
            await landed(flight)
            assert (work.runs, work.finished) == (1, 0)
            callers.start("k", work)  # the late caller
            await callers.joined()
            work.release.set()
        assert callers.tasks[-1].result() == ("answer", False)
        assert (work.runs, work.finished) == (2, 1)
        await landed(flight)

    async def test_after_completion_a_new_call_runs_again(self) -> None:
        """Single-flight is not a cache: once a flight landed, the next call runs anew."""
        flight: SingleFlight[Any] = SingleFlight()
        runs = 0

        async def work() -> int:
            nonlocal runs
            runs += 1
            return runs

        async with asyncio.timeout(LIMIT_S):
            assert await flight.run("k", work) == (1, False)
            assert len(flight) == 0
            assert await flight.run("k", work) == (2, False)

    async def test_after_a_failure_a_new_call_runs_again(self) -> None:
        """A failed flight is not remembered either."""
        flight: SingleFlight[Any] = SingleFlight()
        calls = 0

        async def work() -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("first try fails")
            return "second"

        async with asyncio.timeout(LIMIT_S):
            with pytest.raises(ValueError, match="first try fails"):
                await flight.run("k", work)
            assert await flight.run("k", work) == ("second", False)

    async def test_no_unretrieved_exception_warning_when_every_waiter_left(
        self, unhandled: list[dict[str, Any]]
    ) -> None:
        """Work abandoned by all its callers is not reported as an exception nobody
        retrieved: leaving is normal (clients disconnect), not a bug to log."""
        flight: SingleFlight[Any] = SingleFlight()
        work = Work(error=RuntimeError("failed after everyone left"))
        async with calling(flight) as callers:
            callers.start("k", work, n=3)
            await callers.joined()
            for task in callers.tasks:
                task.cancel()
        work.release.set()
        await landed(flight)
        assert work.finished == 0
        del callers
        gc.collect()
        await asyncio.sleep(0)
        assert unhandled == []

    async def test_no_unretrieved_exception_warning_for_a_failure_every_waiter_saw(
        self, unhandled: list[dict[str, Any]]
    ) -> None:
        """The ordinary failure path leaves nothing unretrieved behind either."""
        flight: SingleFlight[Any] = SingleFlight()
        work = Work(error=RuntimeError("boom"))
        async with calling(flight) as callers:
            callers.start("k", work, n=3)
            await callers.joined()
            work.release.set()
        await landed(flight)
        del callers
        gc.collect()
        await asyncio.sleep(0)
        assert unhandled == []
