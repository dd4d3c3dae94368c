"""The request pipeline: an ordered list of stages, the last of which always answers.

A stage returns a Reply to end the chain (a cache hit, the dispatcher's answer) or None to pass
the context on; failures are exceptions from `router.errors`, mapped to responses in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from router.context import Reply, RequestContext


class Stage(Protocol):
    name: str
    terminal: bool

    async def __call__(self, ctx: RequestContext) -> Reply | None: ...


class Pipeline:
    def __init__(self, stages: Sequence[Stage]) -> None:
        if not stages or not stages[-1].terminal:
            raise ValueError("a pipeline must end with a terminal stage")
        if any(stage.terminal for stage in stages[:-1]):
            raise ValueError("only the last stage of a pipeline may be terminal")
        self.stages = tuple(stages)

    async def run(self, ctx: RequestContext) -> Reply:
        for stage in self.stages:
            reply = await stage(ctx)
            if reply is not None:
                return reply
        raise AssertionError("the terminal stage returned no reply")  # excluded by __init__
