"""read_body on a body that is already in full (the path that arms no read deadline) and on one
still arriving: the same bytes, the same size cap."""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest
from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request

from router.api.body import read_body
from router.api.state import SETTINGS
from router.errors import PayloadTooLarge
from router.settings import Settings

CAP = 1024


def request_with(chunks: list[bytes], *, ended: bool) -> web.Request:
    """A chunked POST whose body holds `chunks`, ended or still open."""
    app = web.Application()
    app[SETTINGS] = Settings.model_validate({"server": {"max_body_bytes": CAP}})
    protocol = mock.Mock(_reading_paused=False)
    payload = streams.StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    for chunk in chunks:
        payload.feed_data(chunk)
    if ended:
        payload.feed_eof()
    headers = {"Transfer-Encoding": "chunked"}
    return make_mocked_request("POST", "/x", headers=headers, payload=payload, app=app)


async def test_a_body_already_in_is_read_whole() -> None:
    """Every chunk that arrived before the handler ran comes back, in order."""
    request = request_with([b'{"a":', b" 1}"], ended=True)
    assert await read_body(request) == b'{"a": 1}'


async def test_a_body_already_in_over_the_cap_is_413() -> None:
    """A chunked body that arrived whole is still held to max_body_bytes."""
    request = request_with([b"7" * CAP, b"7"], ended=True)
    with pytest.raises(PayloadTooLarge):
        await read_body(request)


async def test_a_body_still_arriving_is_awaited() -> None:
    """The rest of a body fed after the read began is waited for and joined."""
    request = request_with([b"ab"], ended=False)
    reading = asyncio.ensure_future(read_body(request))
    await asyncio.sleep(0)
    request.content.feed_data(b"cd")
    request.content.feed_eof()
    assert await reading == b"abcd"
