"""Parse stages: read just enough of the body to route it (400 on anything malformed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import orjson

from router.budget import BUDGET_HEADER
from router.context import Reply, RequestContext
from router.errors import BadRequest, MalformedBody
from router.nesting import TOO_DEEP, check_depth, is_depth_error
from router.v2.request import parse_header, timeout_us

# JSON from this size on is parsed on the CPU executor, not on the event loop: orjson takes
# about 2.5 ms per MiB here (a 19 MB v2 JSON tensor ~80 ms), while a hop to a thread costs
# tens of µs; below it the parse stays inline, behind a single length comparison.
OFF_LOOP_JSON_BYTES = 1024 * 1024


def json_size(ctx: RequestContext) -> int:
    """How many bytes of the body are JSON: all of it, or a binary request's header part."""
    length = ctx.header_length
    return len(ctx.body) if length is None or length < 0 else length


class ParseInferRequest:
    """KServe v2: the JSON header only; tensors are decoded by the target that runs them."""

    name = "parse"
    terminal = False

    def __init__(self, executor: Executor | None = None) -> None:
        self._executor = executor  # None: every body parsed inline (tests, tools)

    async def __call__(self, ctx: RequestContext) -> Reply | None:
        if self._executor is not None and json_size(ctx) >= OFF_LOOP_JSON_BYTES:
            loop = asyncio.get_running_loop()
            parse = loop.run_in_executor(self._executor, parse_header, ctx.body, ctx.header_length)
            header = await parse
        else:
            header = parse_header(ctx.body, ctx.header_length)
        ctx.document = header
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

    def __init__(
        self,
        model_budget: Callable[[str], float | None] = lambda _: None,
        executor: Executor | None = None,
    ) -> None:
        self._model_budget = model_budget  # a model's own default budget (ms), if it has one
        self._executor = executor  # for large bodies (OFF_LOOP_JSON_BYTES); None: all inline

    async def __call__(self, ctx: RequestContext) -> Reply | None:
        if self._executor is not None and len(ctx.body) >= OFF_LOOP_JSON_BYTES:
            loop = asyncio.get_running_loop()
            doc = await loop.run_in_executor(self._executor, parse_object, ctx.body)
        else:
            doc = parse_object(ctx.body)
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


def parse_object(body: bytes) -> dict[str, Any]:
    """An OpenAI request body as a JSON object, or MalformedBody saying what is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if is_depth_error(exc):
            raise MalformedBody(TOO_DEEP) from None
        raise MalformedBody(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(doc, dict):
        raise MalformedBody("request body must be a JSON object")
    check_depth(body, doc)
    return doc
