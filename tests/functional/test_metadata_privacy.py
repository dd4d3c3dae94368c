"""Model metadata and readiness a site relays from an upstream (a model it does not hold)
pass through the same privacy rules as inference: the scanned headers and the query string
are redacted for the tier, and the request's class decides where it may go (residency)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web

from router.settings import Settings
from router.testing import AppThread, RouterThread

EMAIL = "meta.canary.7c2f@example.com"


@dataclass
class MetadataUpstream:
    """A v2 server answering model metadata and readiness, recording what reached it."""

    received: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/models/{model}", self._metadata)
        app.router.add_get("/v2/models/{model}/ready", self._metadata)
        return app

    async def _metadata(self, request: web.Request) -> web.Response:
        self.received.append((request.path_qs, dict(request.headers)))
        model = request.match_info["model"]
        doc = {"name": model, "versions": ["1"], "platform": "x", "inputs": [], "outputs": []}
        return web.json_response(doc)


def cluster(name: str, url: str, jurisdiction: str, model: str) -> dict[str, Any]:
    return {
        "name": name,
        "tier": "central",
        "endpoints": [{"url": url, "jurisdiction": jurisdiction}],
        "protocols": ["kserve-v2"],
        "models": [model],
        "health_check": {"enabled": False},
    }


@dataclass
class Site:
    url: str
    eu: MetadataUpstream
    us: MetadataUpstream


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    eu, us = MetadataUpstream(), MetadataUpstream()
    with AppThread(eu.app) as eu_server, AppThread(us.app) as us_server:
        settings = Settings.model_validate(
            {
                "site": {"jurisdiction": "EU"},
                "upstreams": [
                    cluster("central-eu", eu_server.url, "EU", "eu_model"),
                    cluster("central-us", us_server.url, "US", "us_model"),
                ],
                "cache": {"enabled": False},
            }
        )
        with RouterThread(settings) as router:
            yield Site(router.url, eu, us)


@pytest.mark.parametrize("suffix", ["", "/ready"])
@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"x-user-email": EMAIL}, ""),  # a header the default bundle scans
        ({}, f"?user={EMAIL}"),
        ({"X-Data-Class": "personal"}, ""),
    ],
)
def test_personal_metadata_request_stays_in_its_jurisdiction(
    site: Site, suffix: str, headers: dict[str, str], query: str
) -> None:
    """A personal request for a model served only in the US is refused (403
    residency_denied) and the US upstream receives nothing: the e-mail went there as it was."""
    before = len(site.us.received)
    path = f"/v2/models/us_model{suffix}{query}"
    response = httpx.get(site.url + path, headers=headers, timeout=20)
    assert response.status_code == 403, response.text
    assert len(site.us.received) == before


def test_metadata_headers_and_query_are_redacted_for_the_tier(site: Site) -> None:
    """Where it may go, the relayed request carries the central tier's view: the e-mail in a
    scanned header and in the query string is a token, never the value."""
    before = len(site.eu.received)
    response = httpx.get(
        f"{site.url}/v2/models/eu_model?user={EMAIL}",
        headers={"x-user-email": EMAIL},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    ((path, headers),) = site.eu.received[before:]
    assert EMAIL not in path
    assert EMAIL not in str(headers)
    assert headers["x-user-email"] == "<EMAIL_1>"
    assert response.headers["X-Policy-Revision"]
