"""DecodeInferRequest: turn a v2 request body into typed tensors (400 on anything malformed)."""

from __future__ import annotations

import asyncio

from router.context import Reply, RequestContext
from router.v2.codec import decode_request


class DecodeInferRequest:
    name = "decode"
    terminal = False

    async def __call__(self, ctx: RequestContext) -> Reply | None:
        ctx.infer = request = decode_request(ctx.body, ctx.header_length)
        if request.timeout_us is not None:
            # Triton's per-request timeout can only tighten the deadline.
            ctx.deadline = min(ctx.deadline, _now() + request.timeout_us / 1e6)
        return None


def _now() -> float:
    return asyncio.get_running_loop().time()
