"""Residency through a chain of layer-routers (issue 4, TESTING.md P5): an EU edge forwards to an
EU regional router, which has an LLM in the EU and one in the US behind it.

What the edge found (an e-mail: personal) and the class it started from (its tenants' default)
travel with the request, so the regional router applies the same rule: personal data, even
pseudonymised, stays in the EU; the US upstream receives nothing, also when the EU one is down.
Data with nothing personal in it may still go to the US. Real routers and fakes on 127.0.0.1.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.app import build_app
from router.settings import Settings
from router.testing import AppThread, Behaviour, FakeUpstream

LIMIT_S = 20.0
EMAIL = "chain.canary.5e1d@example.de"
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "policies" / "default"


@dataclass
class Chain:
    edge: str  # an edge whose tenants start at `internal`
    strict_edge: str  # one whose tenants start at `personal`
    eu: FakeUpstream
    us: FakeUpstream


def llm_cluster(name: str, url: str, jurisdiction: str, latency_ms: int) -> dict[str, Any]:
    return {
        "name": name,
        "tier": "central",
        "endpoints": [{"url": url, "jurisdiction": jurisdiction}],
        "expected_latency_ms": latency_ms,
        "models": ["gpt-test"],
        "health_check": {"enabled": False},
        "retry": {"max_attempts": 2, "base_backoff_ms": 1, "max_backoff_ms": 2},
    }


def settings(tier: str, upstreams: list[dict[str, Any]], bundle: Path | None) -> Settings:
    policy = {"bundle": bundle} if bundle is not None else {}
    return Settings.model_validate(
        {
            "site": {"id": f"{tier}-eu", "tier": tier, "jurisdiction": "EU"},
            "upstreams": upstreams,
            "policy": policy,
            "cache": {"enabled": False},
        }
    )


@pytest.fixture(scope="module")
def personal_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default bundle, with every tenant starting at `personal`."""
    bundle = tmp_path_factory.mktemp("bundle") / "personal"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    (bundle / "tenants.yaml").write_text("default:\n  data_class: personal\ntenants: {}\n")
    return bundle


@pytest.fixture(scope="module")
def chain(personal_bundle: Path) -> Iterator[Chain]:
    eu, us = FakeUpstream(name="eu"), FakeUpstream(name="us")
    with AppThread(eu.app) as eu_server, AppThread(us.app) as us_server:
        # The US looks faster: what may go there goes there, so the tests see what may not.
        regional_upstreams = [
            llm_cluster("central-eu", eu_server.url, "EU", 2000),
            llm_cluster("central-us", us_server.url, "US", 1),
        ]
        regional = AppThread(lambda: build_app(settings("regional", regional_upstreams, None)))
        with regional:
            to_regional = [
                {
                    "name": "regional",
                    "tier": "regional",
                    "endpoints": [{"url": regional.url, "jurisdiction": "EU"}],
                    "models": ["gpt-test"],
                    "health_check": {"enabled": False},
                }
            ]
            edge = AppThread(lambda: build_app(settings("edge", to_regional, None)))
            strict = AppThread(lambda: build_app(settings("edge", to_regional, personal_bundle)))
            with edge, strict:
                yield Chain(edge.url, strict.url, eu, us)


def chat(base: str, content: str) -> httpx.Response:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": content}]}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=LIMIT_S)


def sent(fake: FakeUpstream) -> bytes:
    return b"".join(r.body for r in fake.received)


class TestResidencyThroughAChain:
    def test_found_personal_data_stays_in_the_eu_at_the_next_hop(self, chain: Chain) -> None:
        """Pseudonymised for regional, the e-mail's request is still personal there: the
        regional router sends it to EU endpoints only, however many times it is asked."""
        chain.eu.received.clear()
        chain.us.received.clear()
        for _ in range(6):
            assert chat(chain.edge, f"write to {EMAIL}").status_code == 200
        assert len(chain.eu.received) == 6
        assert chain.us.received == []
        assert EMAIL.encode() not in sent(chain.eu)

    def test_declared_class_stays_in_the_eu_at_the_next_hop(self, chain: Chain) -> None:
        """A request whose tenant starts at `personal` on the edge is personal at the next hop
        too, though nothing in it is detected."""
        chain.eu.received.clear()
        chain.us.received.clear()
        for _ in range(6):
            assert chat(chain.strict_edge, "nothing to find here").status_code == 200
        assert len(chain.eu.received) == 6
        assert chain.us.received == []

    def test_personal_fails_closed_when_the_eu_is_down(self, chain: Chain) -> None:
        """With the EU upstream failing, the personal request gets an error, not the US."""
        chain.us.received.clear()
        chain.eu.behaviour = Behaviour(fail_status=503)
        try:
            for _ in range(4):
                assert chat(chain.edge, f"write to {EMAIL}").status_code >= 500
        finally:
            chain.eu.behaviour = Behaviour()
        assert chain.us.received == []

    def test_internal_data_may_still_cross(self, chain: Chain) -> None:
        """Nothing personal found or declared: with the EU upstream failing, the regional
        router answers from the US (the test above is not passing by accident)."""
        chain.us.received.clear()
        chain.eu.behaviour = Behaviour(fail_status=503)
        try:
            for _ in range(3):
                assert chat(chain.edge, "what is the weather like").status_code == 200
        finally:
            chain.eu.behaviour = Behaviour()
        assert len(chain.us.received) == 3
