"""FakeUpstream: a real aiohttp server standing in for an OpenAI or KServe v2 upstream.

It records every request it receives (method, path, headers, body) so tests can prove what
left the router, and its behaviour can be changed while it runs: delay, fail with a status
(and Retry-After), reset mid-body, break a stream after N chunks, redirect, go unhealthy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict


@dataclass(slots=True)
class Recorded:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes
    at: float  # time.monotonic() when it arrived


@dataclass(slots=True)
class Behaviour:
    delay_s: float = 0.0  # before answering
    fail_status: int = 0  # answer this status instead (0: succeed)
    fail_times: int = -1  # how many requests fail_status applies to; -1: all of them
    retry_after: str | None = None
    fail_headers: dict[str, str] = field(default_factory=dict)  # more headers on a failure
    # A failure's body instead of the JSON error (its Content-Type from fail_headers, else JSON).
    fail_body: bytes | None = None
    reset_mid_body: bool = False  # send headers and part of the body, then drop the connection
    stream_chunks: int = 3  # content pieces in an SSE answer
    stream_delay_s: float = 0.0  # between SSE events
    first_event_delay_s: float = 0.0  # after an SSE answer's headers, before its first event
    break_stream_after: int | None = None  # drop the connection after this many events
    # With break_stream_after: end the stream there with an error event of this code, as a
    # chained layer-router whose own upstream broke off does, instead of dropping it.
    break_with_error: str | None = None
    redirect_to: str | None = None
    healthy: bool = True  # what the health endpoints say
    reply_text: str | None = None  # None: echo the last user message
    # The Authorization a request must carry (401 otherwise, as an OpenAI server); None: any.
    authorization: str | None = None


@dataclass
class FakeUpstream:
    name: str = "fake"
    models: Sequence[str] = ("gpt-test",)
    v2_models: Sequence[str] = ()
    v2_versions: Sequence[str] = ("1",)  # what the repository index reports for each v2 model
    behaviour: Behaviour = field(default_factory=Behaviour)
    received: list[Recorded] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v2/repository/index", self._index)
        app.router.add_get("/v2/health/ready", self._health)
        app.router.add_get("/v2/health/live", self._health)
        for path in (
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v2/models/{model}/infer",
            "/v2/models/{model}/versions/{v}/infer",
        ):
            app.router.add_post(path, self._serve)
        return app

    def requests_to(self, path_prefix: str) -> list[Recorded]:
        return [r for r in self.received if r.path.startswith(path_prefix)]

    def _refused(self, request: web.Request) -> web.Response | None:
        """401 as an OpenAI server answers a wrong key, when the behaviour names the right one."""
        wanted = self.behaviour.authorization
        if wanted is None or request.headers.get("Authorization") == wanted:
            return None
        error = {
            "message": "Incorrect API key provided",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
        return web.json_response({"error": error}, status=401)

    async def _models(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": self.name} for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _index(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"name": m, "version": v, "state": "READY"}
                for m in self.v2_models
                for v in self.v2_versions
            ]
        )

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.behaviour.healthy else 503)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(
            Recorded(
                request.method,
                request.path_qs,
                CIMultiDict(request.headers),
                body,
                time.monotonic(),
            )
        )
        b = self.behaviour
        refused = self._refused(request)
        if refused is not None:
            return refused
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        if b.fail_status and b.fail_times != 0:
            b.fail_times -= 1 if b.fail_times > 0 else 0
            headers = {"Retry-After": b.retry_after} if b.retry_after else {}
            headers.update(b.fail_headers)
            if b.fail_body is not None:
                raw = CIMultiDict(headers)
                raw.setdefault("Content-Type", "application/json")
                return web.Response(body=b.fail_body, status=b.fail_status, headers=raw)
            return web.json_response(
                {"error": f"{self.name} failing on purpose"}, status=b.fail_status, headers=headers
            )
        if b.redirect_to:
            raise web.HTTPFound(b.redirect_to)
        if b.reset_mid_body:
            return await self._reset(request)
        if request.path.startswith("/v2/"):
            return self._v2(request, body)
        doc = orjson.loads(body) if body else {}
        if request.path == "/v1/embeddings":
            return self._embeddings(doc)
        if doc.get("stream"):
            return await self._stream(request, doc)
        return web.json_response(self._completion(doc))

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 10_000
        await response.prepare(request)
        await response.write(b'{"partial": "')
        assert request.transport is not None
        request.transport.abort()
        return response

    def _text(self, doc: dict[str, Any]) -> str:
        if self.behaviour.reply_text is not None:
            return self.behaviour.reply_text
        messages = doc.get("messages") or [{"content": doc.get("prompt", "")}]
        last = messages[-1].get("content", "") if isinstance(messages[-1], dict) else ""
        return f"{self.name} heard: {last}"

    def _completion(self, doc: dict[str, Any]) -> dict[str, Any]:
        text = self._text(doc)
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": doc.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def _embeddings(self, doc: dict[str, Any]) -> web.Response:
        inputs = doc.get("input", [])
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(str(x))), 0.5]}
            for i, x in enumerate(items)
        ]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": doc.get("model"),
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )

    async def _stream(self, request: web.Request, doc: dict[str, Any]) -> web.StreamResponse:
        b = self.behaviour
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if b.first_event_delay_s:  # headers at once, tokens later: as LLM servers answer
            await asyncio.sleep(b.first_event_delay_s)
        text = self._text(doc)
        size = max(1, -(-len(text) // max(1, b.stream_chunks)))
        pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
        events = [_chunk(doc, {"role": "assistant", "content": ""})]
        events += [_chunk(doc, {"content": p}) for p in pieces]
        events.append(_chunk(doc, {}, finish="stop"))
        options = doc.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            events.append(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": doc.get("model"),
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 1,
                        "completion_tokens": len(pieces),
                        "total_tokens": 1 + len(pieces),
                    },
                }
            )
        for i, event in enumerate(events):
            if b.break_stream_after is not None and i >= b.break_stream_after:
                if b.break_with_error is not None:
                    error = {"message": "broke off", "type": "server_error", "param": None}
                    error["code"] = b.break_with_error
                    await response.write(b"data: " + orjson.dumps({"error": error}) + b"\n\n")
                    await response.write_eof()
                    return response
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
            if b.stream_delay_s:
                await asyncio.sleep(b.stream_delay_s)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _v2(self, request: web.Request, body: bytes) -> web.Response:
        model = request.match_info["model"]
        length = request.headers.get("Inference-Header-Content-Length")
        header = orjson.loads(body[: int(length)] if length else body)
        outputs = [{"name": "served_by", "datatype": "BYTES", "shape": [1], "data": [self.name]}]
        for tensor in header.get("inputs", []):
            if "data" in tensor:  # echo JSON inputs so tests can see what arrived
                outputs.append(
                    {
                        "name": f"echo_{tensor['name']}",
                        "datatype": tensor["datatype"],
                        "shape": tensor["shape"],
                        "data": tensor["data"],
                    }
                )
        doc: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": outputs}
        if "id" in header:
            doc["id"] = header["id"]
        return web.json_response(doc)


def _chunk(doc: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": doc.get("model"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
