"""The Python floor for a cache hit: read the body, hash it, look it up, return stored bytes
(aiohttp + uvloop, one process). What a cache hit can cost at the least in Python.

usage: python cache_floor_server.py --port 18500 [--headers]
"""

from __future__ import annotations

import argparse
import hashlib

import uvloop
from aiohttp import web

REPLY = b'{"model_name":"color_classifier","outputs":[]}'
# What every answer of the router carries besides Content-Type (values of the same length):
# the floor that would serve a hit with them, apart from the work that makes them.
ROUTER_HEADERS = {
    "X-Cache": "HIT",
    "Age": "3",
    "X-Request-Id": "6b1fdd35dbe184dc4ea40f67784a3980",
    "X-Audit-Id": "01M8EKNYKFGKHT40V8PJQ44WHM",
    "X-Route-Reason": "local,cache_hit",
    "X-Served-By-Tier": "edge",
    "X-Policy-Revision": "2026-11-27.1",
    "Server-Timing": "total;dur=0.12",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--headers", action="store_true", help="add the router's headers")
    args = parser.parse_args()
    store: dict[bytes, bytes] = {}
    headers = ROUTER_HEADERS if args.headers else None

    async def hit(request: web.Request) -> web.Response:
        key = hashlib.blake2b(await request.read(), digest_size=32).digest()
        body = store.setdefault(key, REPLY)
        return web.Response(body=body, content_type="application/json", headers=headers)

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", hit)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
