"""router/pipeline.py: how a chain of stages is checked and run."""

from __future__ import annotations

import pytest

from router.context import Reply, RequestContext
from router.errors import InvalidTensor
from router.pipeline import Pipeline


class FakeStage:
    """A stage that records being called and answers with `reply` (None: pass on)."""

    def __init__(self, name: str, terminal: bool = False, reply: Reply | None = None) -> None:
        self.name = name
        self.terminal = terminal
        self.reply = reply
        self.calls: list[RequestContext] = []

    async def __call__(self, ctx: RequestContext) -> Reply | None:
        self.calls.append(ctx)
        return self.reply


class FailingStage(FakeStage):
    async def __call__(self, ctx: RequestContext) -> Reply | None:
        self.calls.append(ctx)
        raise InvalidTensor("input 'x': bad")


def _ctx() -> RequestContext:
    return RequestContext(api="kserve-v2", model="m", version=None, deadline=0.0)


class TestPipeline:
    def test_empty_chain_is_rejected(self) -> None:
        """A pipeline needs at least one stage."""
        with pytest.raises(ValueError, match="terminal"):
            Pipeline([])

    def test_chain_without_terminal_last_stage_is_rejected(self) -> None:
        """The last stage must be terminal."""
        with pytest.raises(ValueError, match="must end with a terminal stage"):
            Pipeline([FakeStage("a"), FakeStage("b")])

    def test_terminal_stage_in_the_middle_is_rejected(self) -> None:
        """Only the last stage may be terminal."""
        with pytest.raises(ValueError, match="only the last stage"):
            Pipeline([FakeStage("a", terminal=True), FakeStage("b", terminal=True, reply=Reply())])

    async def test_runs_every_stage_in_order_until_the_terminal_one(self) -> None:
        """Stages that pass on are all called, in order, with the same context."""
        order: list[str] = []

        class Recording(FakeStage):
            async def __call__(self, ctx: RequestContext) -> Reply | None:
                order.append(self.name)
                return await super().__call__(ctx)

        answer = Reply(b"done")
        stages = [Recording("a"), Recording("b"), Recording("end", True, answer)]
        ctx = _ctx()
        assert await Pipeline(stages).run(ctx) is answer
        assert order == ["a", "b", "end"]
        assert all(stage.calls == [ctx] for stage in stages)

    async def test_stops_at_the_first_reply(self) -> None:
        """A stage that returns a Reply ends the chain; later stages never run."""
        early = Reply(b"cached")
        first, hit = FakeStage("first"), FakeStage("cache", reply=early)
        last = FakeStage("dispatch", terminal=True, reply=Reply(b"computed"))
        assert await Pipeline([first, hit, last]).run(_ctx()) is early
        assert len(first.calls) == 1
        assert len(hit.calls) == 1
        assert last.calls == []

    async def test_errors_propagate_and_stop_the_chain(self) -> None:
        """A stage's RouterError reaches the caller and later stages are skipped."""
        failing = FailingStage("decode")
        last = FakeStage("dispatch", terminal=True, reply=Reply())
        with pytest.raises(InvalidTensor):
            await Pipeline([failing, last]).run(_ctx())
        assert last.calls == []
