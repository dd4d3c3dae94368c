"""Residency rules naming endpoints (issue 4, item 6: rules map a data class to allowed tiers,
jurisdictions *or endpoints*): a bundle lets personal data reach only the endpoint host
127.0.0.1, while internal data may go anywhere. Two central clusters serve the same model on
loopback, one addressed as 127.0.0.1 and the other, preferred for its lower latency, as
localhost. Personal requests reach only the first, and fail closed when it is down; the
other upstream never sees a byte of them."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from router.app import build_app
from router.settings import Settings
from router.testing import Behaviour, FakeUpstream, serving

LIMIT_S = 10.0
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "policies" / "default"
EMAIL = "jane.doe@example.com"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """The default bundle with personal data allowed only to endpoints on host 127.0.0.1."""
    folder = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, folder)
    residency = yaml.safe_load((folder / "residency.yaml").read_text())
    for rule in residency["rules"]:
        if rule["data_class"] == "personal":
            rule["endpoints"] = ["127.0.0.1"]
    (folder / "residency.yaml").write_text(yaml.safe_dump(residency))
    return folder


def cluster(name: str, url: str, expected_ms: float) -> dict[str, Any]:
    return {
        "name": name,
        "tier": "central",
        "protocols": ["openai"],
        "models": ["gpt-test"],
        "endpoints": [{"url": url}],
        "expected_latency_ms": expected_ms,
        "connect_timeout_ms": 300,
        "health_check": {"enabled": False},
        "retry": {"max_attempts": 2, "base_backoff_ms": 1, "max_backoff_ms": 2},
    }


@pytest.fixture
async def site(bundle: Path) -> AsyncIterator[tuple[str, FakeUpstream, FakeUpstream]]:
    """The site's URL, the upstream named by IP (allowed) and the one named localhost."""
    by_ip, by_name = FakeUpstream(name="by-ip"), FakeUpstream(name="by-name")
    async with contextlib.AsyncExitStack() as stack:
        ip_url = await stack.enter_async_context(serving(by_ip.app()))
        name_url = await stack.enter_async_context(serving(by_name.app()))
        settings = Settings.model_validate(
            {
                "site": {"id": "plant", "tier": "edge"},
                "policy": {"bundle": str(bundle)},
                "cache": {"enabled": False},
                "upstreams": [
                    cluster("central-ip", ip_url, 50.0),
                    # Preferred when allowed: it looks ten times faster.
                    cluster("central-name", name_url.replace("127.0.0.1", "localhost"), 5.0),
                ],
            }
        )
        url = await stack.enter_async_context(serving(build_app(settings)))
        yield url, by_ip, by_name


async def ask(url: str, text: str) -> tuple[int, str, dict[str, Any]]:
    doc = {"model": "gpt-test", "messages": [{"role": "user", "content": text}]}
    async with (
        aiohttp.ClientSession() as http,
        asyncio.timeout(LIMIT_S),
        http.post(f"{url}/v1/chat/completions", json=doc) as response,
    ):
        body = orjson.loads(await response.read())
        return response.status, response.headers.get("X-Route-Reason", ""), body


async def test_personal_data_reaches_only_the_allowed_host(
    site: tuple[str, FakeUpstream, FakeUpstream],
) -> None:
    """An e-mail goes to the endpoint on 127.0.0.1, though the localhost one is preferred."""
    url, by_ip, by_name = site
    status, reasons, _ = await ask(url, f"mail {EMAIL} please")
    assert status == 200
    assert "residency:central-name" in reasons.split(",")
    assert (len(by_ip.received), len(by_name.received)) == (1, 0)


async def test_internal_data_may_go_to_any_host(
    site: tuple[str, FakeUpstream, FakeUpstream],
) -> None:
    """Without personal data the rule for internal data applies: the faster endpoint serves."""
    url, by_ip, by_name = site
    status, _, _ = await ask(url, "what is an inference router?")
    assert status == 200
    assert (len(by_ip.received), len(by_name.received)) == (0, 1)


async def test_personal_data_fails_closed_when_the_allowed_host_is_down(
    site: tuple[str, FakeUpstream, FakeUpstream],
) -> None:
    """With the allowed endpoint failing, the request fails; the other host never sees it."""
    url, by_ip, by_name = site
    by_ip.behaviour = Behaviour(fail_status=503)
    status, _, body = await ask(url, f"mail {EMAIL} please")
    assert status >= 500
    assert EMAIL not in orjson.dumps(body).decode()
    assert by_name.received == []
