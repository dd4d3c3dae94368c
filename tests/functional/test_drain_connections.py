"""While a site drains (SIGTERM), every answer says `Connection: close`: a keep-alive client
stops reusing its connection before the listener closes it, instead of sending a request on
a connection that is then dropped without an answer (which it cannot safely retry)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.api.state import STATUS
from router.settings import Settings
from router.testing import AppThread, Behaviour, FakeUpstream, RouterThread

RGB = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, 0]}]}


@pytest.fixture
def draining(edge_models: Path) -> Iterator[tuple[RouterThread, httpx.Client]]:
    """A site with local models and a chat upstream, told to drain as SIGTERM tells it."""
    upstream = FakeUpstream(behaviour=Behaviour(stream_chunks=2))
    with AppThread(upstream.app) as fake:
        cluster = {
            "name": "central",
            "tier": "central",
            "protocols": ["openai"],
            "models": ["gpt-test"],
            "endpoints": [{"url": fake.url}],
            "health_check": {"enabled": False},
        }
        config = Settings.model_validate(
            {"models": {"repository": edge_models, "inference_threads": 1}, "upstreams": [cluster]}
        )
        with RouterThread(config) as site, httpx.Client(timeout=10) as http:
            assert http.get(site.url + "/v2").headers.get("Connection") != "close"
            assert site.app is not None
            site.app[STATUS].draining = True
            yield site, http


def test_answers_close_their_connection_while_draining(
    draining: tuple[RouterThread, httpx.Client],
) -> None:
    """Local inference, a chat stream, metadata and an error all say Connection: close."""
    site, http = draining
    chat = {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    answers = [
        http.post(site.url + "/v2/models/color_classifier/infer", json=RGB),
        http.post(site.url + "/v1/chat/completions", json=chat),
        http.get(site.url + "/v2/models/color_classifier"),
        http.post(site.url + "/v2/models/color_classifier/infer", content=b"{not json"),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 400]
    assert [a.headers.get("Connection") for a in answers] == ["close"] * 4
