"""Dispatch (terminal): run the request on its target. Today the only target is a local model."""

from __future__ import annotations

from router.context import Reply, RequestContext
from router.inference.local import infer_v2
from router.inference.repository import ModelRepository


class Dispatch:
    name = "dispatch"
    terminal = True

    def __init__(self, models: ModelRepository) -> None:
        self._models = models

    async def __call__(self, ctx: RequestContext) -> Reply:
        assert ctx.infer is not None, "DecodeInferRequest runs before Dispatch"
        entry = self._models.get(ctx.model, ctx.version)
        ctx.served_by = f"{entry.model}/{entry.version}"
        body, header_length = await infer_v2(entry, ctx.infer, ctx.deadline)
        if header_length is None:
            return Reply(body)
        return Reply(
            body,
            content_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(header_length)},
        )
