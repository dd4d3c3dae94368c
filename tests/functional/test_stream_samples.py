"""Issue 5 item 4: streamed (SSE) chat answers are sampled into the spool as JSON ones are, once
the stream went out whole: desensitized with the central tier's rules (tokens kept as tokens),
never for a broken or over-long stream, and without holding the stream back from its client.
Real openai SDK streams through a router on loopback, in front of a fake OpenAI upstream."""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import yaml
from aiohttp import web

from router.api.admin import start_admin
from router.api.state import SPOOL, TELEMETRY
from router.app import build_app
from router.redaction.vault import TOKEN_RE
from router.resources import default_policy_bundle
from router.settings import Settings
from router.testing import FakeUpstream, central_chat_cluster, serving

TIMEOUT_S = 20.0
SAMPLED, UNSAMPLED = "gpt-sampled", "gpt-unsampled"
MAX_SCANNED_BYTES = 4096  # the bundle's detection.max_body_bytes: the bound of a stream's copy
TOKEN = TOKEN_RE.pattern
# Letters no hex digest holds: a fragment of such a word found in the spool is the word's.
NON_HEX = "ghijklmnopqrstuvwxyz"


def luhn_card(prefix: str = "4") -> str:
    """A random, checksum-valid card number (so detectors see a card, not digits)."""
    digits = [int(c) for c in prefix + "".join(str(secrets.randbelow(10)) for _ in range(14))]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def non_hex_word(length: int = 16) -> str:
    return "".join(secrets.choice(NON_HEX) for _ in range(length))


def fragments_in(spooled: bytes, word: str, size: int = 4) -> list[str]:
    """The pieces of `word` `size` letters long found in `spooled`."""
    pieces = (word[i : i + size] for i in range(len(word) - size + 1))
    return [piece for piece in pieces if piece.encode() in spooled]


@dataclass
class Site:
    app: web.Application
    url: str
    upstream: FakeUpstream
    spool_path: Path

    async def samples(self) -> list[dict[str, Any]]:
        """The samples in the spool (read through it: it holds its file exclusively)."""
        spool = self.app[SPOOL].spool
        assert spool is not None
        records = await spool.take_batch(1000)
        spool.release([record.id for record in records])
        return [orjson.loads(r.payload) for r in records if r.kind == "sample"]

    def spool_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.spool_path.parent.glob("spool.sqlite3*"))

    async def settled(self, answered: int) -> None:
        """Once `answered` requests were handled to their end (counted: the sample of a
        stream is scheduled right after), with every spool put they started committed."""
        deadline = time.monotonic() + TIMEOUT_S
        while sum(self.app[TELEMETRY].requests.requests.values()) < answered:
            assert time.monotonic() < deadline, "the requests were never counted"
            await asyncio.sleep(0.02)
        await self.app[SPOOL].drain_pending()


def bundle_for(folder: Path) -> Path:
    """The default bundle sampling every answer of one model, none of the others, and scanning
    bodies up to MAX_SCANNED_BYTES."""
    bundle = folder / "bundle"
    shutil.copytree(default_policy_bundle(), bundle)
    sampling = {"default": 0.0, "models": {SAMPLED: 1.0}}
    (bundle / "sampling.yaml").write_text(yaml.safe_dump(sampling), encoding="utf-8")
    detection = yaml.safe_load((bundle / "detection.yaml").read_text(encoding="utf-8"))
    detection["max_body_bytes"] = MAX_SCANNED_BYTES
    (bundle / "detection.yaml").write_text(yaml.safe_dump(detection), encoding="utf-8")
    return bundle


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    upstream = FakeUpstream(name="llm", models=(SAMPLED, UNSAMPLED))
    async with serving(upstream.app()) as upstream_url:
        cluster = central_chat_cluster(upstream_url, models=[SAMPLED, UNSAMPLED])
        spool_path = tmp_path / "spool.sqlite3"
        settings = Settings.model_validate(
            {
                "site": {"id": "edge-streams"},
                "cache": {"enabled": False},
                "policy": {"bundle": bundle_for(tmp_path)},
                "spool": {"path": spool_path},
                "upstreams": [cluster],
            }
        )
        app = build_app(settings)
        async with serving(app) as url:
            yield Site(app, url, upstream, spool_path)


@pytest.fixture
async def client(site: Site) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=site.url + "/v1", api_key="sk-test", max_retries=0, timeout=TIMEOUT_S
    ) as sdk:
        yield sdk


async def streamed_text(client: openai.AsyncOpenAI, model: str, content: str) -> str:
    """A chat streamed through the SDK; the text it assembled."""
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    return "".join(pieces)


def sample_text(sample: dict[str, Any]) -> str:
    """The text of a streamed sample's events, as a client would assemble it."""
    events = sample["response"]
    return "".join(
        choice["delta"].get("content") or "" for event in events for choice in event["choices"]
    )


async def test_a_streamed_chat_is_sampled_desensitized(
    site: Site, client: openai.AsyncOpenAI
) -> None:
    """A streamed chat at rate 1.0 gives exactly one sample: its events (no [DONE]), the
    e-mail and card the request held and the stream echoed (split across events) there as the
    request's own central-tier tokens, never raw anywhere in the spool's files."""
    email, card = f"{non_hex_word()}@example.com", luhn_card()
    # Pieces of 4 or 5 characters: the tokens the upstream echoes are split between events
    # (and restored whole for the client).
    site.upstream.behaviour.stream_chunks = 12
    asked = f"Card {card}, mail {email}"
    assert await streamed_text(client, SAMPLED, asked) == f"llm heard: {asked}"
    await site.settled(1)
    (sample,) = await site.samples()
    assert sample["streamed"] is True
    assert sample["model"] == SAMPLED
    assert all(event["object"] == "chat.completion.chunk" for event in sample["response"])
    text = sample_text(sample)
    match = re.fullmatch(rf"llm heard: Card ({TOKEN}), mail ({TOKEN})", text)
    assert match is not None, text
    sent = orjson.loads(site.upstream.requests_to("/v1/chat/completions")[-1].body)
    # The request's central view, with the tokens the answer's copies got too.
    assert sample["request"]["messages"] == sent["messages"]
    assert sent["messages"][0]["content"] == f"Card {match[1]}, mail {match[2]}"
    spooled = site.spool_bytes()
    word = email.partition("@")[0]
    assert card.encode() not in spooled
    assert email.encode() not in spooled
    assert fragments_in(spooled, word) == []


async def test_a_value_split_between_events_is_found_whole(
    site: Site, client: openai.AsyncOpenAI
) -> None:
    """An e-mail only the answer holds, streamed a few characters per event, is found in the
    text the events make together: no fragment of it reaches the spool."""
    email = f"{non_hex_word(20)}@example.com"
    answer = f"write to {email} today"
    site.upstream.behaviour.reply_text = answer
    site.upstream.behaviour.stream_chunks = len(answer) // 4
    assert await streamed_text(client, SAMPLED, "who do I ask?") == answer
    await site.settled(1)
    (sample,) = await site.samples()
    assert re.fullmatch(rf"write to {TOKEN} today", sample_text(sample)), sample_text(sample)
    word, spooled = email.partition("@")[0], site.spool_bytes()
    assert not [
        word[i : i + 4] for i in range(len(word) - 3) if word[i : i + 4].encode() in spooled
    ]


async def test_a_broken_stream_gives_no_sample(site: Site, client: openai.AsyncOpenAI) -> None:
    """An upstream that drops the connection mid-stream: the client is told (an error event),
    and nothing is sampled; the next stream, whole, is."""
    site.upstream.behaviour.break_stream_after = 2
    with pytest.raises(openai.APIError):
        await streamed_text(client, SAMPLED, "tell me")
    await site.settled(1)
    assert await site.samples() == []
    site.upstream.behaviour.break_stream_after = None
    assert await streamed_text(client, SAMPLED, "tell me") == "llm heard: tell me"
    await site.settled(2)
    assert len(await site.samples()) == 1


async def test_a_model_sampled_at_rate_zero_gives_no_sample(
    site: Site, client: openai.AsyncOpenAI
) -> None:
    """Rate 0 for the model: its whole streams are not sampled; the sampled model's are."""
    assert await streamed_text(client, UNSAMPLED, "hello") == "llm heard: hello"
    await site.settled(1)
    assert await site.samples() == []
    assert await streamed_text(client, SAMPLED, "hello") == "llm heard: hello"
    await site.settled(2)
    assert [s["model"] for s in await site.samples()] == [SAMPLED]


async def test_a_stream_over_the_bound_gives_no_sample(
    site: Site, client: openai.AsyncOpenAI
) -> None:
    """A stream longer than detection.max_body_bytes reaches its client whole but is not
    sampled (never a partial sample passed as whole); /status counts it."""
    long_answer = "lorem ipsum " * (MAX_SCANNED_BYTES // 6)
    site.upstream.behaviour.reply_text = long_answer
    site.upstream.behaviour.stream_chunks = 20
    assert await streamed_text(client, SAMPLED, "say a lot") == long_answer
    await site.settled(1)
    assert await site.samples() == []
    admin = await start_admin(site.app, "127.0.0.1", 0)
    try:
        port = admin.addresses[0][1]
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/status") as response,
        ):
            status = await response.json()
    finally:
        await admin.cleanup()
    assert status["spool"]["samples_too_large"] == 1


async def test_a_sampled_stream_is_not_held_back(site: Site, client: openai.AsyncOpenAI) -> None:
    """With the upstream pausing between events, a sampled stream's first chunk reaches the
    client long before its end, the chunks spread out as they were sent; then it is sampled."""
    delay_s = 0.3
    site.upstream.behaviour.stream_delay_s = delay_s
    started = time.monotonic()
    arrivals: list[float] = []
    stream = await client.chat.completions.create(
        model=SAMPLED, messages=[{"role": "user", "content": "slowly"}], stream=True
    )
    async for _ in stream:
        arrivals.append(time.monotonic() - started)
    total = time.monotonic() - started
    events = 5  # role, three content pieces, finish
    assert len(arrivals) == events
    # The upstream sleeps delay_s after each event; a buffering copy would deliver every
    # chunk at the very end.
    assert total >= events * delay_s * 0.9
    assert arrivals[0] < total / 3
    assert arrivals[-1] - arrivals[0] > total / 2
    await site.settled(1)
    assert len(await site.samples()) == 1
