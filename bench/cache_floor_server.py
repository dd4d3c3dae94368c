"""The Python floor for a cache hit: read the body, hash it, look it up, return stored bytes
(aiohttp + uvloop, one process). What a cache hit can cost at the least in Python.

usage: python cache_floor_server.py --port 18500
"""

from __future__ import annotations

import argparse
import hashlib

import uvloop
from aiohttp import web

REPLY = b'{"model_name":"color_classifier","outputs":[]}'


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    store: dict[bytes, bytes] = {}

    async def hit(request: web.Request) -> web.Response:
        key = hashlib.blake2b(await request.read(), digest_size=32).digest()
        body = store.setdefault(key, REPLY)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", hit)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
