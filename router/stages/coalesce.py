"""Single-flight for the response cache: what the one execution of identical concurrent
misses hands its followers, and when a follower must not take it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from router.cache import response_ttl, vary_names
from router.context import Reply, RequestContext
from router.errors import DeadlineExceeded, RouterError, UpstreamTimeout
from router.pipeline import Rest
from router.trail import CLIENT_GONE

# A flight that failed this close to its leader's deadline failed for want of the leader's time.
BUDGET_SLACK_S = 0.05


def leading(ctx: RequestContext, rest: Rest) -> Callable[[], Awaitable[Flight]]:
    """The flight's work: the leader's rest of the chain, and what its followers need of it."""
    leader = asyncio.current_task()

    async def lead() -> Flight:
        ctx.shared = True  # its followers take its body: never relayed as it arrives
        try:
            reply = await rest()
        except (DeadlineExceeded, UpstreamTimeout) as exc:
            if asyncio.get_running_loop().time() >= ctx.deadline - BUDGET_SLACK_S:
                raise LeaderOutOfTime(exc, ctx.deadline) from None
            raise FlightFailed(exc, ctx) from None
        except RouterError as exc:
            raise FlightFailed(exc, ctx) from None
        # A leader whose client left writes no record: its followers must not point at it.
        gone = leader is None or leader.cancelling() > 0 or leader.done()
        varies = vary_names(reply.headers.get("Vary"))
        return Flight(
            reply,
            ctx.served_tier,
            _story(ctx),
            ctx.upstream_reasons,
            ctx.upstream_ms,
            "" if gone else ctx.audit_id,
            (ctx.served_by, ctx.served_version, ctx.model_sha256, ctx.served_model),
            # What no shared cache may hand others (private, no-store, Vary: *) is the
            # leader's alone, and an answer that varies only fits the same header values.
            response_ttl(reply.headers.get("Cache-Control"), 1.0) is None or "*" in varies,
            tuple((name, ctx.headers.get(name)) for name in varies),
        )

    return lead


def _story(ctx: RequestContext) -> tuple[str, ...]:
    """The leader's reasons as its followers tell them: its client leaving is its own."""
    return tuple(reason for reason in ctx.reasons if reason != CLIENT_GONE)


class FlightFailed(Exception):
    """The flight's error, with how it came about: every waiter answers with the error, and
    a follower's answer and record tell the leader's story (the targets tried, and why)."""

    def __init__(self, error: RouterError, ctx: RequestContext) -> None:
        super().__init__(error.message)
        self.error = error
        self.reasons = _story(ctx)
        self.tier = ctx.served_tier
        self.upstream_reasons = ctx.upstream_reasons


class LeaderOutOfTime(Exception):
    """The flight timed out because the leader's own budget ended: a follower with a later
    deadline asks for itself instead of sharing that failure."""

    def __init__(self, error: RouterError, deadline: float) -> None:
        super().__init__(error.message)
        self.error = error
        self.deadline = deadline


@dataclass(frozen=True, slots=True)
class Flight:
    """What a coalesced execution hands every waiter: the answer and how it came about."""

    reply: Reply
    tier: str
    reasons: tuple[str, ...]
    upstream_reasons: str
    upstream_ms: float | None
    audit_id: str  # the leader's record; "" when the leader left before the answer
    model: tuple[str, str, str, str]  # served_by, served_version, model_sha256, served_model
    private: bool  # for the leader only
    vary: tuple[tuple[str, str | None], ...]  # the leader's values of the headers it varies on
