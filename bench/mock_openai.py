"""Mock OpenAI-compatible upstream for bench/forwarding.py: aiohttp + uvloop, prebuilt bytes.

POST /v1/chat/completions
    reads the body (as a real upstream would) and answers a fixed chat.completion JSON; when
    the body asks for `"stream": true`, an SSE stream instead: the first chunk at once, then
    `--chunks` more every `--delay-ms`, then `data: [DONE]`. The delay makes buffering visible:
    a proxy that held the stream back would add chunks x delay to the time to first event.
GET /v1/models, POST /v2/repository/index, GET /v2/health/ready
    what a layer-router asks an upstream for discovery and health checks.
GET /stats
    {"chat": requests answered so far}, so the harness can tell that every request arrived.

usage: python bench/mock_openai.py [--port 0] [--chunks 5] [--delay-ms 1]
Prints "listening on http://HOST:PORT" once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
import uvloop
from aiohttp import web
from serving import serve_forever

MODEL = "mock"
CREATED = 1_700_000_000

# The fixed answer (same shape and size as the peer harness's payloads/chat_response.json).
COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-mock0001",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_mock",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "An inference router forwards each model request to the cheapest "
                    "tier that can answer it correctly.",
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 31, "completion_tokens": 18, "total_tokens": 49},
    }
)


def sse_events(chunks: int) -> list[bytes]:
    """The stream's events: a role delta, `chunks` content deltas, the finish, [DONE]."""

    def event(delta: dict[str, str], finish: str | None = None) -> bytes:
        doc = {
            "id": "chatcmpl-mock0001",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    events = [event({"role": "assistant", "content": ""})]
    events += [event({"content": f"word{i} "}) for i in range(chunks)]
    events += [event({}, "stop"), b"data: [DONE]\n\n"]
    return events


def build_app(chunks: int, delay_s: float) -> web.Application:
    events = sse_events(chunks)
    models = orjson.dumps(
        {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
    )
    sse_headers = {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # what SSE servers send so that nginx does not buffer
    }

    served = [0]  # chat requests answered: the harness checks that every request got here

    async def chat(request: web.Request) -> web.StreamResponse:
        served[0] += 1
        body = await request.read()
        # A byte test first: the plain completion must stay as cheap as the peer harness's.
        if b'"stream"' not in body or not orjson.loads(body).get("stream"):
            return web.Response(body=COMPLETION, content_type="application/json")
        response = web.StreamResponse(headers=sse_headers)
        await response.prepare(request)
        await response.write(events[0])
        for event in events[1:-1]:
            await asyncio.sleep(delay_s)
            await response.write(event)
        await response.write(events[-1])
        await response.write_eof()
        return response

    async def list_models(request: web.Request) -> web.Response:
        return web.Response(body=models, content_type="application/json")

    async def v2_index(request: web.Request) -> web.Response:
        return web.Response(body=b"[]", content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        return web.Response()

    async def stats(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"chat": served[0]}), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v2/repository/index", v2_index)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/stats", stats)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--chunks", type=int, default=5, help="content chunks in an SSE answer")
    ap.add_argument("--delay-ms", type=float, default=1.0, help="between SSE events")
    args = ap.parse_args()
    uvloop.run(
        serve_forever(build_app(args.chunks, args.delay_ms / 1000), args.host, args.port, "mock")
    )


if __name__ == "__main__":
    main()
