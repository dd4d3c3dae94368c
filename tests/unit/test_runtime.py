"""Runtime generations: replaced models close only after every request using them is done."""

from __future__ import annotations

import asyncio
from typing import Any

from router.runtime import Generation, Runtime
from router.settings import Settings


class Models:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def generation(number: int, models: Models) -> Generation:
    nothing: Any = None
    return Generation(number, Settings(), nothing, nothing, models, nothing)  # type: ignore[arg-type]


async def test_models_outlive_every_generation_that_shares_them() -> None:
    """A request on generation 1 keeps models A open though generations 2 (same models, new
    bundle) and 3 (new models) came after it; A closes when that request ends."""
    a, b = Models(), Models()
    first = generation(1, a)
    runtime = Runtime(first)
    first.enter()  # a request pinned to generation 1
    runtime.swap(generation(2, a))
    runtime.swap(generation(3, b))
    await asyncio.sleep(0.05)
    assert not a.closed
    first.leave()
    await asyncio.sleep(0.05)
    assert a.closed
    assert not b.closed
    await runtime.close()
    assert b.closed


async def test_unused_models_close_at_once() -> None:
    """With nothing in flight, replaced models close straight after the swap."""
    a = Models()
    runtime = Runtime(generation(1, a))
    runtime.swap(generation(2, Models()))
    await asyncio.sleep(0.01)
    assert a.closed
    await runtime.close()
