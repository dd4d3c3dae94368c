"""The request pipeline: an ordered list of stages, the last of which always answers.

A stage returns a Reply to end the chain (the dispatcher's answer) or None to pass the context
on; failures are exceptions from `router.errors`, mapped to responses in one place. A stage
that must see what the rest of the chain answers (the cache stores it, coalesces identical
requests and falls back to a stale copy on failure) implements `around(ctx, rest)` instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Protocol

from router.context import Reply, RequestContext

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

Rest = Callable[[], Awaitable[Reply]]


class Stage(Protocol):
    name: str
    terminal: bool

    async def __call__(self, ctx: RequestContext) -> Reply | None: ...


class AroundStage(Protocol):
    name: str
    terminal: bool

    async def around(self, ctx: RequestContext, rest: Rest) -> Reply: ...


class Pipeline:
    def __init__(self, stages: Sequence[Stage | AroundStage], tracer: Tracer | None = None) -> None:
        if not stages or not stages[-1].terminal:
            raise ValueError("a pipeline must end with a terminal stage")
        if any(stage.terminal for stage in stages[:-1]):
            raise ValueError("only the last stage of a pipeline may be terminal")
        self.stages = tuple(stages)
        # Each stage's `around`, or None: looked up once here, not per stage per request.
        self._arounds = tuple(getattr(stage, "around", None) for stage in self.stages)
        self.tracer = tracer  # None: tracing is off, and costs this one check per request

    async def run(self, ctx: RequestContext) -> Reply:
        if self.tracer is not None:
            from router.telemetry.spans import run_traced

            return await run_traced(self.stages, ctx, self.tracer)
        return await self._run_from(0, ctx)

    async def _run_from(self, start: int, ctx: RequestContext) -> Reply:
        stages, arounds = self.stages, self._arounds
        for position in range(start, len(stages)):
            around = arounds[position]
            if around is not None:
                rest: Rest = partial(self._run_from, position + 1, ctx)
                reply: Reply = await around(ctx, rest)
                return reply
            answer = await stages[position](ctx)  # type: ignore[operator]
            if answer is not None:
                return answer
        raise AssertionError("the terminal stage returned no reply")  # excluded by __init__
