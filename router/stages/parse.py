"""Parse stages: read just enough of the body to route it (400 on anything malformed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson

from router.budget import BUDGET_HEADER
from router.context import Reply, RequestContext
from router.errors import BadRequest, MalformedBody
from router.nesting import TOO_DEEP, check_depth, is_depth_error
from router.v2.request import parse_header, timeout_us


class ParseInferRequest:
    """KServe v2: the JSON header only; tensors are decoded by the target that runs them."""

    name = "parse"
    terminal = False

    async def __call__(self, ctx: RequestContext) -> Reply | None:
        ctx.document = header = parse_header(ctx.body, ctx.header_length)
        micros = timeout_us(header)
        if micros is not None:
            # Triton's per-request timeout can only tighten the deadline.
            now = asyncio.get_running_loop().time()
            ctx.deadline = min(ctx.deadline, now + micros / 1e6)
        return None


class ParseOpenAIRequest:
    """OpenAI: the JSON object, its `model` and whether it asks for a stream."""

    name = "parse"
    terminal = False

    def __init__(self, model_budget: Callable[[str], float | None] = lambda _: None) -> None:
        self._model_budget = model_budget  # a model's own default budget (ms), if it has one

    async def __call__(self, ctx: RequestContext) -> Reply | None:
        try:
            doc = orjson.loads(ctx.body)
        except orjson.JSONDecodeError as exc:
            if is_depth_error(exc):
                raise MalformedBody(TOO_DEEP) from None
            raise MalformedBody(
                f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        if not isinstance(doc, dict):
            raise MalformedBody("request body must be a JSON object")
        check_depth(ctx.body, doc)
        model = doc.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' must be a non-empty string", param="model")
        stream = doc.get("stream")
        if stream is None:  # absent or null: OpenAI's field is nullable, default false
            stream = False
        if not isinstance(stream, bool):
            raise BadRequest("'stream' must be a boolean", param="stream")
        ctx.document, ctx.model, ctx.stream = doc, model, stream
        budget = self._model_budget(model)
        if budget is not None and BUDGET_HEADER not in ctx.headers:
            # The model is known only now: its own default replaces the route's, from arrival.
            waited = time.perf_counter() - ctx.started
            ctx.deadline = asyncio.get_running_loop().time() - waited + budget / 1000
        return None
