"""Bundle sources as status and logs name them."""

from __future__ import annotations

import pytest
from aiohttp import web

from router.errors import BundleRejected
from router.policy.source import HttpSource
from router.settings import BundleSourceSettings
from router.testing import AppThread


async def test_credentials_in_a_source_url_are_never_shown() -> None:
    """user:password in the URL is used to fetch but left out of the name status shows."""
    source = HttpSource(BundleSourceSettings(url="https://ops:canary-pw@central.example/b.tar.gz"))
    try:
        assert "canary-pw" not in source.name
        assert source.name == "https://central.example/b.tar.gz"
    finally:
        await source.close()


def _serving_4_kib() -> web.Application:
    async def big(_request: web.Request) -> web.Response:
        return web.Response(body=b"\0" * 4096)

    app = web.Application()
    app.router.add_get("/b.tar.gz", big)
    return app


async def test_an_archive_over_max_bytes_is_named_too_large_not_unreachable() -> None:
    """A bundle server answering with more than `max_bytes` was reported 'unreachable', which
    sends the operator to the network; the rejection says the archive is too large."""
    with AppThread(_serving_4_kib) as server:
        source = HttpSource(BundleSourceSettings(url=server.url + "/b.tar.gz", max_bytes=1024))
        try:
            with pytest.raises(BundleRejected) as caught:
                await source.fetch(None)
        finally:
            await source.close()
    assert caught.value.reason == (
        "bundle server answered more than policy.source.max_bytes (1024 bytes)"
    )
