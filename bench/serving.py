"""How every bench server runs: listen, say where on stdout (the benches read that line), then
serve until SIGTERM/SIGINT ends the process."""

from __future__ import annotations

import asyncio

from aiohttp import web


async def serve_forever(app: web.Application, host: str, port: int, label: str) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    for address in runner.addresses:
        print(f"{label} listening on http://{address[0]}:{address[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
