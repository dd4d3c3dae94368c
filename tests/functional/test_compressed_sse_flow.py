"""An upstream that compresses its SSE stream (gzip or deflate, each event flushed) is relayed
event by event with both upstream clients: the client sees each event before the upstream
sends the next, never the stream inflated only at its end. Real processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from router.testing import central_chat_cluster, router_in_front_of, serving

MODEL = "gpt-test"
EVENTS = 4
LIMIT_S = 10.0


class FlushedStream:
    """An upstream sending EVENTS SSE events in `coding`, each sync-flushed, each only once
    the test saw the one before (`seen`)."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.seen = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.answer)
        return app

    async def answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        wbits = 16 + zlib.MAX_WBITS if self.coding == "gzip" else zlib.MAX_WBITS
        deflater = zlib.compressobj(wbits=wbits)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Content-Encoding": self.coding}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        for n in range(EVENTS):
            event = f'data: {{"n": {n}}}\n\n'.encode()
            await response.write(deflater.compress(event) + deflater.flush(zlib.Z_SYNC_FLUSH))
            self.seen.clear()
            await asyncio.wait_for(self.seen.wait(), LIMIT_S)
        await response.write(deflater.compress(b"data: [DONE]\n\n") + deflater.flush())
        await response.write_eof()
        return response


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_event_stream_flows_event_by_event(
    stack: contextlib.AsyncExitStack, tmp_path: Path, client: str, coding: str
) -> None:
    """Each event of a compressed upstream stream reaches the client while the upstream waits
    for it to, then the stream ends whole."""
    upstream = FlushedStream(coding)
    url = await stack.enter_async_context(serving(upstream.app()))
    cluster = central_chat_cluster(url, MODEL, client=client, request_timeout_ms=20000)
    _, base = await router_in_front_of(stack, tmp_path, cluster)
    chat = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    got = bytearray()
    async with (
        asyncio.timeout(LIMIT_S * 2),
        aiohttp.ClientSession() as http,
        http.post(f"{base}/v1/chat/completions", json=chat) as response,
    ):
        assert response.status == 200
        for n in range(EVENTS):
            while f'"n": {n}'.encode() not in got:
                got += await response.content.readany()
            upstream.seen.set()
        got += await response.content.read()
    assert got.endswith(b"data: [DONE]\n\n")
