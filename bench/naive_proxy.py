"""The naive Python proxy floor: aiohttp + uvloop pass-through with one pooled ClientSession.

Any POST goes to the same path upstream with the body and Content-Type only; the answer comes
back whole, or chunk by chunk when it is an SSE stream. No parsing, no header hygiene, no
timeouts, retries or health: what any Python forwarder pays at least.

usage: python bench/naive_proxy.py --upstream http://127.0.0.1:PORT [--port 0]
Prints "listening on http://HOST:PORT" once it accepts connections.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import uvloop
from aiohttp import ClientSession, TCPConnector, web
from serving import serve_forever

SESSION = web.AppKey("session", ClientSession)


def build_app(upstream: str) -> web.Application:
    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        url = upstream + request.path_qs
        async with request.app[SESSION].post(url, data=body, headers=headers) as up:
            kind = up.headers.get("Content-Type", "")
            if not kind.startswith("text/event-stream"):
                data = await up.read()
                return web.Response(body=data, status=up.status, headers={"Content-Type": kind})
            response = web.StreamResponse(status=up.status, headers={"Content-Type": kind})
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = ClientSession(connector=TCPConnector(limit=512, keepalive_timeout=60))
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post("/{tail:.*}", forward)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:18081")
    args = ap.parse_args()
    uvloop.run(
        serve_forever(build_app(args.upstream.rstrip("/")), args.host, args.port, "naive proxy")
    )


if __name__ == "__main__":
    main()
