"""Sensitive data at the site boundary (issue 4, TESTING.md P4): the real router app with the
default policy bundle in front of recording fake upstreams on 127.0.0.1.

What an upstream of each tier receives is read byte by byte (path, headers, body): central gets
tokens only, regional gets keyed pseudonyms for personal data and tokens for payment data,
secrets reach neither, and the caller's answers have the tokens restored, streamed or not. A
bounded canary sweep sends unique generated values through every path (local, escalation,
regional, central, retry, fallback, stream, cache, errors) and finds none of them upstream, in
any log record, error body or cache entry. Detection that cannot finish fails closed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import re
import shutil
import string
import struct
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import openai
import orjson
import pytest
import re2
from aiohttp import web
from faker import Faker
from yarl import URL

from router.api.state import CACHE
from router.app import build_app
from router.policy.bundle import load_bundle
from router.resources import default_policy_bundle
from router.settings import Settings
from router.testing import (
    Behaviour,
    FakeUpstream,
    Recorded,
    identity_model,
    serving,
    write_repository,
)

LIMIT_S = 10.0  # any single client call
REVISION = load_bundle(default_policy_bundle()).revision
EDGE_MODELS = Path(__file__).resolve().parents[2] / "edge_models"
REDACTIONS_FORMAT = re.compile(r"^[A-Z][A-Z0-9_]*=[1-9][0-9]*(?:,[A-Z][A-Z0-9_]*=[1-9][0-9]*)*$")

# Values the Done-when tests use; the sweep generates its own.
EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
IBAN = "DE89 3704 0044 0532 0130 00"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
GITHUB_TOKEN = "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
BEARER = "s3cr3tT0kenValue123abc"
PAYMENT = f"Refund card {CARD} to IBAN {IBAN}, then confirm to {EMAIL}."


# -- plumbing ------------------------------------------------------------------------------


@dataclass
class Site:
    url: str
    app: web.Application
    fakes: dict[str, FakeUpstream]  # by cluster name: plant (edge), regional, central

    @property
    def regional(self) -> FakeUpstream:
        return self.fakes["regional"]

    @property
    def central(self) -> FakeUpstream:
        return self.fakes["central"]

    @property
    def plant(self) -> FakeUpstream:
        return self.fakes["plant"]

    def off_site(self) -> list[Recorded]:
        """Every request that left the site (the edge-tier plant server is on the site)."""
        return self.regional.received + self.central.received


def cluster(name: str, tier: str, url: str, models: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "tier": tier,
        "endpoints": [{"url": url, "jurisdiction": "EU"}],
        "models": models,
        "connect_timeout_ms": 500,
        "request_timeout_ms": 3000,
        "health_check": {"enabled": False},
        "outlier": {"consecutive_failures": 1000},  # failures here are on purpose
        "retry": {"base_backoff_ms": 1, "max_backoff_ms": 2},
    }


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """color_classifier (escalates when unsure) and a BYTES identity model, run locally."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(EDGE_MODELS / "color_classifier", root / "color_classifier")
    return write_repository(root, {"echo_bytes": {1: identity_model("BYTES")}})


async def start_site(
    stack: contextlib.AsyncExitStack, repository: Path, bundle: Path | None = None
) -> Site:
    """Fakes for an edge-tier plant server, a regional and a central cluster (all EU, as is
    the site), and the router in front of them."""
    fakes = {
        name: FakeUpstream(name=name, behaviour=Behaviour())
        for name in ("plant", "regional", "central")
    }
    urls = {name: await stack.enter_async_context(serving(f.app())) for name, f in fakes.items()}
    settings = Settings.model_validate(
        {
            "site": {"id": "edge-eu-1", "tier": "edge", "jurisdiction": "EU"},
            "models": {"repository": str(repository), "inference_threads": 1},
            "upstreams": [
                cluster("plant", "edge", urls["plant"], ["gpt-edge"]),
                cluster(
                    "regional",
                    "regional",
                    urls["regional"],
                    ["gpt-regional", "gpt-both", "v2-regional"],
                ),
                cluster(
                    "central",
                    "central",
                    urls["central"],
                    ["gpt-central", "gpt-both", "big_color", "v2-central"],
                ),
            ],
            "routing": {
                "models": {
                    "color_classifier": {"escalate": {"to_model": "big_color", "threshold": 0.9}}
                }
            },
            "policy": {"bundle": str(bundle)} if bundle else {},
        }
    )
    app = build_app(settings)
    url = await stack.enter_async_context(serving(app))
    return Site(url, app, fakes)


@pytest.fixture
async def site(stack: contextlib.AsyncExitStack, repository: Path) -> Site:
    return await start_site(stack, repository)


@pytest.fixture
async def sdk(site: Site) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=site.url + "/v1", api_key="sk-test", max_retries=0, timeout=LIMIT_S
    ) as client:
        yield client


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    @property
    def reason(self) -> str:
        return str(self.headers.get("X-Route-Reason", ""))

    def json(self) -> Any:
        return orjson.loads(self.body)


async def post(
    http: aiohttp.ClientSession,
    url: str | URL,
    doc: Any = None,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    body = orjson.dumps(doc) if data is None else data
    sent = {"Content-Type": "application/json", **(headers or {})}
    async with http.post(url, data=body, headers=sent) as response:
        return Answer(response.status, response.headers, await response.read())


def received_bytes(record: Recorded) -> bytes:
    """Everything an upstream saw of one request: path and query, every header, the body."""
    headers = b"\n".join(f"{k}: {v}".encode() for k, v in record.headers.items())
    return record.path.encode() + b"\n" + headers + b"\n" + record.body


def forms(value: str) -> set[str]:
    """The ways a value can travel: as is, without separators, percent-encoded, JSON-escaped."""
    out = {value, value.replace(" ", ""), quote(value, safe=""), quote_plus(value)}
    out.add(orjson.dumps(value).decode()[1:-1])
    return out


class Finder:
    """Searches bytes for any form of many values at once, in linear time (one RE2 pass)."""

    def __init__(self, values: Iterable[str]) -> None:
        every = sorted({f for v in values for f in forms(v)})
        self._pattern = re2.compile("|".join(re2.escape(f) for f in every).encode())

    def first(self, data: bytes | str) -> str | None:
        raw = data.encode() if isinstance(data, str) else data
        match = self._pattern.search(raw)
        return match.group().decode() if match else None


def log_text(records: Iterable[logging.LogRecord]) -> str:
    """Every log record as it could be written: message, arguments, exception, stack."""
    formatter = logging.Formatter()
    parts = []
    for record in records:
        parts.append(f"{record.name}: {formatter.format(record)}")
        if record.exc_text:
            parts.append(record.exc_text)
    return "\n".join(parts)


def chat(model: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def sse_content(body: bytes) -> str:
    """The assistant text of an OpenAI SSE stream."""
    text = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block.startswith(b"data: ") or block == b"data: [DONE]":
            continue
        event = orjson.loads(block[len(b"data: ") :])
        assert "error" not in event, event
        for choice in event.get("choices", []):
            text.append(choice.get("delta", {}).get("content") or "")
    return "".join(text)


def assert_clean(records: list[Recorded], *values: str) -> None:
    finder = Finder(values)
    for record in records:
        leak = finder.first(received_bytes(record))
        assert leak is None, f"{leak!r} reached {record.path}"


# -- Done when: central never sees card, IBAN or e-mail; the caller gets them back -----------


class TestCentralTokensOnly:
    """The issue's Done-when, through the real openai SDK."""

    async def test_chat_answer_restored(self, site: Site, sdk: openai.AsyncOpenAI) -> None:
        """Card, IBAN and e-mail reach central as tokens only, in no byte of path, headers or
        body; the answer has them restored; X-Redactions counts types, never values."""
        raw = await sdk.chat.completions.with_raw_response.create(
            model="gpt-central", messages=[{"role": "user", "content": PAYMENT}]
        )
        completion = raw.parse()
        assert completion.choices[0].message.content == f"central heard: {PAYMENT}"
        assert raw.headers["X-Redactions"] == "CARD=1,EMAIL=1,IBAN=1"
        assert raw.headers["X-Policy-Revision"] == REVISION
        assert raw.headers["X-Served-By-Tier"] == "central"
        [record] = site.central.received
        assert_clean(site.off_site(), CARD, IBAN, EMAIL)
        sent = orjson.loads(record.body)["messages"][0]["content"]
        assert sent == "Refund card <CARD_1> to IBAN <IBAN_1>, then confirm to <EMAIL_1>."

    async def test_values_written_in_other_formats(
        self, site: Site, sdk: openai.AsyncOpenAI
    ) -> None:
        """A card grouped by dots, an IBAN by dashes and an e-mail whose @ is a \\u0040
        escape in prose reach central as tokens only and come back as written."""
        card, iban, email = (
            "4111.1111.1111.1111",
            "DE89-3704-0044-0532-0130-00",
            ("jane.doe\\u0040example.com"),
        )
        text = f"Refund card {card} to IBAN {iban}, then confirm to {email}."
        raw = await sdk.chat.completions.with_raw_response.create(
            model="gpt-central", messages=[{"role": "user", "content": text}]
        )
        assert raw.parse().choices[0].message.content == f"central heard: {text}"
        assert raw.headers["X-Redactions"] == "CARD=1,EMAIL=1,IBAN=1"
        assert_clean(site.off_site(), card, iban, email, "jane.doe")
        [record] = site.central.received
        sent = orjson.loads(record.body)["messages"][0]["content"]
        assert sent == "Refund card <CARD_1> to IBAN <IBAN_1>, then confirm to <EMAIL_1>."

    async def test_stream_restored(self, site: Site, sdk: openai.AsyncOpenAI) -> None:
        """Streamed in pieces that cut through the tokens, the answer is restored all the same."""
        site.central.behaviour.stream_chunks = 7
        raw = await sdk.chat.completions.with_raw_response.create(
            model="gpt-central",
            messages=[{"role": "user", "content": PAYMENT}],
            stream=True,
            stream_options={"include_usage": True},
        )
        assert raw.headers["X-Redactions"] == "CARD=1,EMAIL=1,IBAN=1"
        text = ""
        async for chunk in raw.parse():
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        assert text == f"central heard: {PAYMENT}"
        assert len(site.central.received) == 1
        assert_clean(site.off_site(), CARD, IBAN, EMAIL)

    async def test_foreign_token_left_alone(self, site: Site, sdk: openai.AsyncOpenAI) -> None:
        """A token the request never issued, echoed by the upstream, is not restored."""
        content = f"see <EMAIL_2> and <CARD_7> and {EMAIL}"
        completion = await sdk.chat.completions.create(
            model="gpt-central", messages=[{"role": "user", "content": content}]
        )
        assert completion.choices[0].message.content == f"central heard: {content}"
        sent = orjson.loads(site.central.received[0].body)["messages"][0]["content"]
        assert sent == "see <EMAIL_2> and <CARD_7> and <EMAIL_1>"

    async def test_placeholder_written_by_the_caller_keeps_its_meaning(
        self, site: Site, sdk: openai.AsyncOpenAI
    ) -> None:
        """A caller's own `<EMAIL_1>` (a template placeholder) is not a token: the e-mail gets
        another number, so upstream can tell them apart and the answer keeps the caller's."""
        content = f"the placeholder <EMAIL_1> stands for a customer; mine is {EMAIL}"
        completion = await sdk.chat.completions.create(
            model="gpt-central", messages=[{"role": "user", "content": content}]
        )
        assert completion.choices[0].message.content == f"central heard: {content}"
        sent = orjson.loads(site.central.received[0].body)["messages"][0]["content"]
        assert sent == "the placeholder <EMAIL_1> stands for a customer; mine is <EMAIL_2>"
        # A body with nothing to find in it is not walked; its placeholders still count.
        await sdk.chat.completions.create(
            model="gpt-central",
            messages=[{"role": "user", "content": "what does <EMAIL_1> stand for?"}],
            extra_query={"customer": EMAIL},
        )
        assert site.central.received[1].path.endswith("customer=%3CEMAIL_2%3E")

    async def test_concurrent_requests_keep_their_own_values(
        self, site: Site, http: aiohttp.ClientSession
    ) -> None:
        """Twenty requests at once, each with its own e-mail: each answer holds its own value
        and no other (every request numbers its tokens from 1)."""
        emails = [f"user{i}.x{random.randrange(10**6)}@example.org" for i in range(20)]
        answers = await asyncio.gather(
            *(post(http, f"{site.url}/v1/chat/completions", chat("gpt-central", e)) for e in emails)
        )
        for email, answer in zip(emails, answers, strict=True):
            assert answer.status == 200
            content = answer.json()["choices"][0]["message"]["content"]
            assert content == f"central heard: {email}"
        assert_clean(site.off_site(), *emails)
        assert {orjson.loads(r.body)["messages"][0]["content"] for r in site.central.received} == {
            "<EMAIL_1>"
        }


class TestRegionalPseudonyms:
    async def test_hash_for_email_tokens_for_payment(
        self, site: Site, sdk: openai.AsyncOpenAI
    ) -> None:
        """Regional gets a keyed pseudonym for the e-mail (stable, one-way) and tokens for the
        card and IBAN; the answer restores card and IBAN, the pseudonym stays one."""
        answers = []
        for _ in range(2):
            completion = await sdk.chat.completions.create(
                model="gpt-regional", messages=[{"role": "user", "content": PAYMENT}]
            )
            answers.append(completion.choices[0].message.content or "")
        assert_clean(site.off_site(), CARD, IBAN, EMAIL)
        sent = [orjson.loads(r.body)["messages"][0]["content"] for r in site.regional.received]
        pseudonym = re.search(r"<EMAIL#[a-p]{12}>", sent[0])
        assert pseudonym is not None, sent[0]
        assert sent[0] == f"Refund card <CARD_1> to IBAN <IBAN_1>, then confirm to {pseudonym[0]}."
        assert sent[1] == sent[0]  # the same value gets the same pseudonym every time
        expected = PAYMENT.replace(EMAIL, pseudonym[0])
        assert answers == [f"regional heard: {expected}"] * 2


class TestSecrets:
    @pytest.mark.parametrize("model", ["gpt-regional", "gpt-central"])
    async def test_secrets_never_leave(
        self, site: Site, http: aiohttp.ClientSession, model: str
    ) -> None:
        """AWS key, JWT, bearer token and GitHub token are dropped for every tier past the
        edge, wherever they are (content, Authorization, a scanned header)."""
        content = (
            f"deploy with {AWS_KEY}, session {JWT}, call the API with "
            f"'Authorization: Bearer {BEARER}' and push with {GITHUB_TOKEN}"
        )
        answer = await post(
            http,
            f"{site.url}/v1/chat/completions",
            chat(model, content),
            headers={"Authorization": f"Bearer {BEARER}", "X-Forwarded-User": GITHUB_TOKEN},
        )
        assert answer.status == 200, answer.body
        assert_clean(site.off_site(), AWS_KEY, JWT, BEARER, GITHUB_TOKEN)
        assert len(site.off_site()) == 1
        counts = dict(item.split("=") for item in answer.headers["X-Redactions"].split(","))
        assert counts == {"AWS_KEY": "1", "BEARER_TOKEN": "1", "GITHUB_TOKEN": "2", "JWT": "1"}


# Tool-call arguments whose text holds more than their parse: a duplicate key's first value,
# float literals rounded to another integer or past 1e16 (parsed as 6.011e18).
HIDING_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {
        "name": "f",
        "arguments": '{"card": "4111111111111111", "card": "x", "a": 4111111111111111.9,'
        ' "b": 6011000000000000001.0}',
    },
}


class TestWhereValuesHide:
    async def test_tool_call_arguments(self, site: Site, http: aiohttp.ClientSession) -> None:
        """JSON inside a string (tool-call arguments) is redacted inside and stays valid JSON."""
        arguments = orjson.dumps({"to": EMAIL, "card": CARD, "note": 'say "hi"'}).decode()
        doc = {
            "model": "gpt-central",
            "messages": [
                {"role": "user", "content": "send the invoice"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "send_invoice", "arguments": arguments},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sent"},
            ],
        }
        answer = await post(http, f"{site.url}/v1/chat/completions", doc)
        assert answer.status == 200, answer.body
        assert_clean(site.off_site(), EMAIL, CARD)
        sent = orjson.loads(site.central.received[0].body)
        call = sent["messages"][1]["tool_calls"][0]["function"]
        assert orjson.loads(call["arguments"]) == {
            "to": "<EMAIL_1>",
            "card": "<CARD_1>",
            "note": 'say "hi"',
        }

    @pytest.mark.parametrize(
        "body",
        [
            # A duplicate key: the parse keeps the last value, an upstream's may the first.
            b'{"model":"gpt-central","messages":[{"role":"user","content":"pay 4111111111111111"}],'
            b'"messages":[{"role":"user","content":"hi"}]}',
            # Float literals whose written digits their parsed value does not keep: rounded up
            # to 4111111111111112.0, and a 19-digit card past 1e16 (6.011e18 once parsed).
            b'{"model":"gpt-central","messages":[{"role":"user","content":"hi"}],'
            b'"tools":[{"type":"function","function":{"name":"f","parameters":'
            b'{"a":4111111111111111.9,"b":6011000000000000001.0}}}]}',
            # Both inside tool-call arguments, a JSON text in a string.
            orjson.dumps(
                {
                    "model": "gpt-central",
                    "messages": [{"role": "assistant", "tool_calls": [HIDING_CALL]}],
                }
            ),
        ],
        ids=["duplicate-key", "float-literals", "tool-call-arguments"],
    )
    async def test_raw_bytes_that_say_more_than_their_parse(
        self, site: Site, http: aiohttp.ClientSession, body: bytes
    ) -> None:
        """A clean body goes upstream as the document that was scanned, encoded anew: what
        only its raw bytes hold (a duplicate key's first value, a float literal's digits)
        never leaves, and the plant server on the site still gets the bytes as sent."""
        answer = await post(http, f"{site.url}/v1/chat/completions", data=body)
        assert answer.status == 200, answer.body
        assert "X-Redactions" not in answer.headers
        assert_clean(site.off_site(), "4111111111111111", "6011000000000000001")
        sent = orjson.loads(site.central.received[0].body)
        if "tool_calls" in sent["messages"][0]:
            arguments = sent["messages"][0]["tool_calls"][0]["function"]["arguments"]
            assert orjson.loads(arguments) == {"card": "x", "a": 4111111111111112.0, "b": 6.011e18}
        else:
            assert sent == orjson.loads(body)
        edge = body.replace(b"gpt-central", b"gpt-edge")
        assert (await post(http, f"{site.url}/v1/chat/completions", data=edge)).status == 200
        assert site.plant.received[0].body == edge

    async def test_query_string(self, site: Site, http: aiohttp.ClientSession) -> None:
        """An e-mail in the query string is redacted in the path the upstream is asked for."""
        url = URL(
            f"{site.url}/v1/chat/completions?customer={quote(EMAIL, safe='')}&page=2",
            encoded=True,
        )
        answer = await post(http, url, chat("gpt-central", "hello"))
        assert answer.status == 200, answer.body
        assert answer.headers["X-Redactions"] == "EMAIL=1"
        assert_clean(site.off_site(), EMAIL)
        path = site.central.received[0].path
        assert path == "/v1/chat/completions?customer=%3CEMAIL_1%3E&page=2"

    async def test_scanned_headers(self, site: Site, http: aiohttp.ClientSession) -> None:
        """The headers the bundle names are scanned and redacted for the tier: tokens for
        central, pseudonyms for regional."""
        headers = {
            "X-User-Email": EMAIL,
            "X-Customer-Id": f"card {CARD}",
            "X-Forwarded-User": "john@example.org",
        }
        for model in ("gpt-central", "gpt-regional"):
            answer = await post(
                http, f"{site.url}/v1/chat/completions", chat(model, "hi"), headers=headers
            )
            assert answer.status == 200, answer.body
            assert answer.headers["X-Redactions"] == "CARD=1,EMAIL=2"
        assert_clean(site.off_site(), EMAIL, CARD, "john@example.org")
        central, regional = site.central.received[0], site.regional.received[0]
        assert central.headers["X-User-Email"] == "<EMAIL_1>"
        assert central.headers["X-Customer-Id"] == "card <CARD_1>"
        assert central.headers["X-Forwarded-User"] == "<EMAIL_2>"
        assert re.fullmatch(r"<EMAIL#[a-p]{12}>", regional.headers["X-User-Email"])
        assert regional.headers["X-Customer-Id"] == "card <CARD_1>"

    async def test_copies_of_a_value_found_in_context(
        self, site: Site, http: aiohttp.ClientSession
    ) -> None:
        """A value only found next to its name (a national id, an SSN, a date of birth) is
        redacted in every other place the request repeats it, earlier turns included, also
        when the request is sent again (its survey is remembered, not rerun)."""
        messages = [
            {"role": "user", "content": "use 86095742719 and 536221234, see 03/02/1990"},
            {"role": "assistant", "content": "which numbers are these?"},
            {
                "role": "user",
                "content": "Steuer-ID 86095742719, my ssn is 536221234, I was born on 03/02/1990",
            },
        ]
        for _ in range(2):
            doc = {"model": "gpt-central", "messages": messages}
            answer = await post(http, f"{site.url}/v1/chat/completions", doc)
            assert answer.status == 200, answer.body
        assert_clean(site.off_site(), "86095742719", "536221234", "03/02/1990")
        tensor = {"name": "t", "shape": [2], "datatype": "BYTES"}
        v2 = {"inputs": [{**tensor, "data": ["id 86095742719", "Steuer-ID 86095742719"]}]}
        for _ in range(2):  # v2 requests are cacheable: the repeat's survey is remembered
            answer = await post(http, f"{site.url}/v2/models/v2-central/infer", v2)
            assert answer.status == 200, answer.body
        assert_clean(site.off_site(), "86095742719", "536221234", "03/02/1990")
        sent = [orjson.loads(r.body) for r in site.central.received]
        assert sent[1]["messages"][0]["content"] == (
            "use <NATIONAL_ID_1> and <US_SSN_1>, see <DATE_OF_BIRTH_1>"
        )
        assert [s["inputs"][0]["data"][0] for s in sent[2:]] == ["id <NATIONAL_ID_1>"] * 2

    async def test_copies_in_headers_the_bundle_does_not_name(
        self, site: Site, http: aiohttp.ClientSession
    ) -> None:
        """A value found in the body is redacted in every other header the request repeats
        it in (a Referer's query, a client's own header, baggage), tokens for central and
        pseudonyms for regional: those headers are not scanned, but their copies of it were
        sent as they came; a header holding none goes on as written."""
        headers = {
            "Referer": f"https://shop.example/?mail={EMAIL}",
            "X-Note": f"paid with {CARD}",
            "baggage": f"user={quote(EMAIL, safe='')}",
            "X-Plain": "nothing here",
        }
        for model in ("gpt-central", "gpt-regional"):
            doc = chat(model, f"mail {EMAIL}, card {CARD}")
            answer = await post(http, f"{site.url}/v1/chat/completions", doc, headers=headers)
            assert answer.status == 200, answer.body
            assert answer.headers["X-Redactions"] == "CARD=2,EMAIL=3"
        assert_clean(site.off_site(), EMAIL, CARD)
        central, regional = site.central.received[0], site.regional.received[0]
        assert central.headers["Referer"] == "https://shop.example/?mail=<EMAIL_1>"
        assert central.headers["X-Note"] == "paid with <CARD_1>"
        assert re.fullmatch(r"user=<EMAIL_\d>", central.headers["baggage"])  # as written: %40
        assert central.headers["X-Plain"] == "nothing here"
        assert re.fullmatch(r"user=<EMAIL#[a-p]{12}>", regional.headers["baggage"])
        assert regional.headers["X-Note"] == "paid with <CARD_1>"

    async def test_model_version_in_the_path(self, site: Site, http: aiohttp.ClientSession) -> None:
        """The path goes upstream as it came, so a version segment holding a card number or an
        e-mail is refused (400) and nothing is sent; a real version is forwarded."""
        doc = {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
        for version in ("4111111111111111", quote(EMAIL, safe="@")):
            url = URL(f"{site.url}/v2/models/v2-central/versions/{version}/infer", encoded=True)
            answer = await post(http, url, doc)
            assert answer.status == 400, answer.body
            assert EMAIL.encode() not in answer.body
        assert site.off_site() == []
        answer = await post(http, f"{site.url}/v2/models/v2-central/versions/1/infer", doc)
        assert answer.status == 200, answer.body
        assert site.central.received[0].path == "/v2/models/v2-central/versions/1/infer"

    async def test_metadata_relayed_upstream(
        self, stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession
    ) -> None:
        """A v2 metadata, readiness, config or stats request for a model only central holds
        is redacted for central as an inference request is (its query string, the headers the
        bundle names), and one whose version segment holds a card is refused (400): these
        went upstream as they came."""
        seen: list[tuple[str, str]] = []

        async def metadata(request: web.Request) -> web.Response:
            seen.append((request.path_qs, request.headers.get("X-User-Email", "")))
            return web.json_response({"name": request.match_info["model"]})

        upstream = web.Application()
        upstream.router.add_get("/v2/models/{model}{rest:.*}", metadata)
        central = cluster(
            "central", "central", await stack.enter_async_context(serving(upstream)), ["v2-central"]
        )
        settings = Settings.model_validate({"site": {"jurisdiction": "EU"}, "upstreams": [central]})
        url = await stack.enter_async_context(serving(build_app(settings)))
        headers = {"X-User-Email": EMAIL}
        for path in ("", "/ready", "/config", "/stats"):
            target = URL(f"{url}/v2/models/v2-central{path}?mail={quote(EMAIL)}", encoded=True)
            async with http.get(target, headers=headers) as answer:
                assert answer.status == 200, await answer.read()
        for path in ("/versions/4111111111111111", "/versions/4111111111111111/ready"):
            async with http.get(f"{url}/v2/models/v2-central{path}") as answer:
                assert answer.status == 400
        assert [s[0] for s in seen] == [
            f"/v2/models/v2-central{path}?mail=%3CEMAIL_1%3E"
            for path in ("", "/ready", "/config", "/stats")
        ]
        assert {s[1] for s in seen} == {"<EMAIL_1>"}

    async def test_drop_fields(self, site: Site, http: aiohttp.ClientSession) -> None:
        """`user` and `metadata.customer_email` never leave the site; the plant server (edge
        tier, on the site) gets the request as sent."""
        doc = chat("gpt-central", "hi", user=EMAIL, metadata={"customer_email": "x@example.org"})
        assert (await post(http, f"{site.url}/v1/chat/completions", doc)).status == 200
        sent = orjson.loads(site.central.received[0].body)
        assert "user" not in sent
        assert sent["metadata"] == {}
        doc["model"] = "gpt-edge"
        assert (await post(http, f"{site.url}/v1/chat/completions", doc)).status == 200
        assert orjson.loads(site.plant.received[0].body) == doc


# -- P4: canaries through every path ---------------------------------------------------------


class Canaries:
    """Unique values of every kind, half from Faker and half made up here (seeded)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.faker = Faker(["en_US", "de_DE", "fr_FR", "nl_NL", "en_GB"])
        self.faker.seed_instance(seed)
        self.issued: list[str] = []

    def _keep(self, value: str) -> str:
        self.issued.append(value)
        return value

    def _chars(self, alphabet: str, k: int) -> str:
        return "".join(self.rng.choices(alphabet, k=k))

    def email(self) -> str:
        n = len(self.issued)
        if n % 2:
            user, domain = self.faker.unique.email().split("@")
            return self._keep(f"{user}{n}@{domain}")
        tag = self._chars(string.ascii_lowercase + string.digits, 8)
        return self._keep(f"canary.{tag}.{n}@mail-{tag[:3]}.example.net")

    def card(self) -> str:
        if self.rng.random() < 0.5:
            return self._keep(self.faker.unique.credit_card_number())
        prefix = self.rng.choice(["4", "51", "55", "2221", "2720", "6011"])
        digits = prefix + self._chars(string.digits, 15 - len(prefix))
        digits += luhn_digit(digits)
        return self._keep(" ".join(digits[i : i + 4] for i in range(0, 16, 4)))

    def iban(self) -> str:
        if self.rng.random() < 0.5:
            return self._keep(self.faker.unique.iban())
        bban = self._chars(string.digits, 18)
        check = 98 - int(bban + "131400") % 97  # D=13, E=14, then "00"
        raw = f"DE{check:02d}{bban}"
        return self._keep(" ".join(raw[i : i + 4] for i in range(0, len(raw), 4)))

    def secret(self) -> str:
        """A sentence carrying one secret of a random kind (the secret alone is kept)."""
        kind = self.rng.randrange(4)
        if kind == 0:
            key = self._keep("AKIA" + self._chars("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16))
            return f"deploy with {key}"
        if kind == 1:
            token = self._keep("ghp_" + self._chars(string.ascii_letters + string.digits, 36))
            return f"push with {token}"
        if kind == 2:
            payload = orjson.dumps({"sub": self.rng.randrange(10**9), "n": len(self.issued)})
            parts = [b'{"alg":"HS256","typ":"JWT"}', payload, self.rng.randbytes(32)]
            jwt = ".".join(base64.urlsafe_b64encode(p).rstrip(b"=").decode() for p in parts)
            return f"session {self._keep(jwt)}"
        return f"Authorization: Bearer {self.bearer()}"

    def bearer(self) -> str:
        return self._keep(self._chars(string.ascii_letters + string.digits, 24))


def luhn_digit(digits: str) -> str:
    """The check digit that makes `digits` + it pass the Luhn test."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str(-total % 10)


@dataclass
class ChatCall:
    path: str  # with a query string
    doc: dict[str, Any]
    headers: dict[str, str]
    text: str  # the user's message, which the fake upstream echoes
    email: str  # the e-mail in it


@dataclass
class Sweep:
    """Sends requests full of fresh canaries and keeps what came back."""

    site: Site
    http: aiohttp.ClientSession
    canaries: Canaries
    answers: list[Answer] = field(default_factory=list)

    async def send(self, path: str, doc: Any, headers: dict[str, str] | None = None) -> Answer:
        answer = await post(
            self.http, URL(self.site.url + path, encoded=True), doc, headers=headers
        )
        self.answers.append(answer)
        assert answer.headers.get("X-Policy-Revision") == REVISION, (path, answer.status)
        redactions = answer.headers.get("X-Redactions")
        assert redactions is None or REDACTIONS_FORMAT.match(redactions), redactions
        return answer

    def chat_request(self, model: str, **extra: Any) -> ChatCall:
        """A chat request carrying canaries everywhere a value can hide."""
        c = self.canaries
        email = c.email()
        text = f"Refund card {c.card()} to IBAN {c.iban()}, then confirm to {email}."
        arguments = orjson.dumps({"to": c.email(), "card": c.card()}).decode()
        doc = {
            "model": model,
            "messages": [
                {"role": "system", "content": f"Internal note: {c.secret()}; {c.secret()}."},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "send_invoice", "arguments": arguments},
                        }
                    ],
                },
                {"role": "user", "content": text},
            ],
            "user": c.email(),
            "metadata": {"customer_email": c.email()},
            **extra,
        }
        path = f"/v1/chat/completions?customer={quote(c.email(), safe='')}&page=1"
        headers = {"X-User-Email": c.email(), "Authorization": f"Bearer {c.bearer()}"}
        return ChatCall(path, doc, headers, text, email)

    async def chat(self, call: ChatCall) -> Answer:
        return await self.send(call.path, call.doc, call.headers)

    def v2_request(self, data: str | None = None) -> tuple[dict[str, Any], str]:
        """A v2 body with canaries in `id`, `parameters` and a BYTES tensor (JSON)."""
        c = self.canaries
        text = data or f"ship to {c.email()} paid by {c.card()} from {c.iban()}"
        doc = {
            "id": c.email(),
            "parameters": {"customer": c.email(), "note": c.secret(), "card": c.card()},
            "inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 1], "data": [text]}],
        }
        return doc, text

    def color_request(self, rgb: list[float]) -> dict[str, Any]:
        c = self.canaries
        return {
            "id": c.email(),
            "parameters": {"customer": c.email(), "note": c.secret(), "iban": c.iban()},
            "inputs": [{"name": "rgb", "datatype": "FP32", "shape": [1, 3], "data": rgb}],
        }


def restored_for(tier: str, text: str, email: str, answer: str) -> None:
    """Central restores everything; regional all but the e-mail, which stays a pseudonym."""
    expected = f"{tier} heard: {text}"
    if tier == "central":
        assert answer == expected
    else:
        before, after = expected.split(email)
        pattern = re.escape(before) + r"<EMAIL#[a-p]{12}>" + re.escape(after)
        assert re.fullmatch(pattern, answer), answer


class TestCanarySweep:
    ROUNDS = 24

    async def test_p4_no_canary_leaves_the_site(
        self,
        site: Site,
        http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Every path, ~340 requests with unique canaries: none reaches a regional or central
        upstream in any form, none is in a log record, an error body, our headers or the
        response cache; the caller's answers have the tokens restored."""
        sweep = Sweep(site, http, Canaries(seed=4))
        caplog.set_level(logging.DEBUG)  # every logger, aiohttp's included
        for _ in range(self.ROUNDS):
            await self.one_round(sweep)

        finder = Finder(sweep.canaries.issued)
        for record in site.off_site():
            leak = finder.first(received_bytes(record))
            assert leak is None, f"{leak!r} reached {record.path}"
        assert finder.first(log_text(caplog.records)) is None
        for answer in sweep.answers:
            headers = "\n".join(f"{k}: {v}" for k, v in answer.headers.items())
            assert finder.first(headers) is None
            if answer.status >= 400:
                assert finder.first(answer.body) is None, answer.body
        # The plant server is on the site: policy lets it see the request as sent.
        assert finder.first(b"".join(received_bytes(r) for r in site.plant.received))
        assert len(sweep.answers) == 14 * self.ROUNDS
        assert site.app[CACHE].bytes_used == 0  # nothing with a canary in it was kept
        assert len(sweep.canaries.issued) > 100 * self.ROUNDS

    async def one_round(self, sweep: Sweep) -> None:
        site, c = sweep.site, sweep.canaries

        # Central, regional and the edge-tier plant server: answers restored.
        for tier in ("central", "regional"):
            call = sweep.chat_request(f"gpt-{tier}")
            answer = await sweep.chat(call)
            assert answer.status == 200, answer.body
            assert answer.reason == f"forward:{tier}"
            content = answer.json()["choices"][0]["message"]["content"]
            restored_for(tier, call.text, call.email, content)
        assert (await sweep.chat(sweep.chat_request("gpt-edge"))).status == 200

        # A stream from central, cut into pieces.
        call = sweep.chat_request("gpt-central", stream=True)
        site.central.behaviour = Behaviour(stream_chunks=5)
        answer = await sweep.chat(call)
        assert answer.status == 200
        assert sse_content(answer.body) == f"central heard: {call.text}"

        # Fallback: regional fails (a chat is not replayed), central answers.
        site.regional.behaviour = Behaviour(fail_status=503, fail_times=1)
        call = sweep.chat_request("gpt-both")
        answer = await sweep.chat(call)
        assert answer.status == 200, answer.body
        assert answer.reason == "failed:regional:upstream_status,fallback:central"
        content = answer.json()["choices"][0]["message"]["content"]
        restored_for("central", call.text, call.email, content)

        # Retry: an embeddings call (replayable) to central fails once, then succeeds.
        site.central.behaviour = Behaviour(fail_status=503, fail_times=1)
        answer = await sweep.send(
            "/v1/embeddings", {"model": "gpt-central", "input": [c.email(), f"card {c.card()}"]}
        )
        assert answer.status == 200, answer.body
        assert answer.reason == "forward:central,retried:1"

        # Retry on v2 at regional: the echoed tensor comes back with tokens restored.
        site.regional.behaviour = Behaviour(fail_status=503, fail_times=1)
        doc, text = sweep.v2_request(f"paid by {c.card()} from {c.iban()}")
        answer = await sweep.send("/v2/models/v2-regional/infer", doc)
        assert answer.status == 200, answer.body
        assert answer.reason == "forward:regional,retried:1"
        echoed = {o["name"]: o["data"] for o in answer.json()["outputs"]}
        assert echoed["echo_INPUT0"] == [text]

        # Local: a BYTES identity model (asked twice: personal data is never cached, so never
        # a hit) and a confident classifier; nothing leaves.
        before = len(site.off_site())
        doc, text = sweep.v2_request()
        for _ in range(2):
            answer = await sweep.send("/v2/models/echo_bytes/infer", doc)
            assert answer.status == 200, answer.body
            assert answer.json()["outputs"][0]["data"] == [text]
            assert answer.headers.get("X-Cache") != "HIT"
        answer = await sweep.send(
            "/v2/models/color_classifier/infer", sweep.color_request([1.0, 1.0, 1.0])
        )
        assert (answer.status, answer.reason) == (200, "local")
        assert len(site.off_site()) == before

        # Escalation: an unsure local answer goes to central's bigger model, redacted.
        doc = sweep.color_request([1.0, 0.0, 0.0])
        answer = await sweep.send("/v2/models/color_classifier/infer", doc)
        assert answer.status == 200, answer.body
        assert answer.reason == "local,escalated_low_confidence:central"
        assert answer.json()["id"] == doc["id"]  # echoed as a token, restored for the caller

        # Errors: unknown models, and an upstream that fails with nowhere to fall back.
        assert (await sweep.chat(sweep.chat_request("gpt-nowhere"))).status == 404
        doc, _ = sweep.v2_request()
        assert (await sweep.send("/v2/models/nowhere/infer", doc)).status == 404
        site.regional.behaviour = Behaviour(fail_status=503, fail_times=1)
        answer = await sweep.chat(sweep.chat_request("gpt-regional"))
        assert answer.json()["error"]["code"] == "upstream_status", answer.body
        site.regional.behaviour = Behaviour()
        site.central.behaviour = Behaviour()


# -- fail closed -----------------------------------------------------------------------------


def bundle_copy(tmp_path: Path, **detection: str) -> Path:
    """The default bundle with detection.yaml lines replaced (`key="new line"`)."""
    folder = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), folder)
    text = (folder / "detection.yaml").read_text(encoding="utf-8")
    for key, line in detection.items():
        text, n = re.subn(rf"^{key}:.*$", line, text, flags=re.M)
        assert n == 1, key
    (folder / "detection.yaml").write_text(text, encoding="utf-8")
    return folder


def binary_bytes_request(
    text: str | bytes, *, extra_fp32: bool = False
) -> tuple[bytes, dict[str, str]]:
    """A v2 request whose BYTES tensor travels in the binary part, as tritonclient sends it
    (with `extra_fp32`, an FP32 tensor [0.5, 0.25] follows it there)."""
    element = text.encode() if isinstance(text, str) else text
    binary = struct.pack("<I", len(element)) + element
    inputs: list[dict[str, Any]] = [
        {
            "name": "INPUT0",
            "datatype": "BYTES",
            "shape": [1, 1],
            "parameters": {"binary_data_size": len(binary)},
        }
    ]
    if extra_fp32:
        inputs.append(
            {"name": "S", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}
        )
        binary += struct.pack("<2f", 0.5, 0.25)
    header = orjson.dumps(
        {"inputs": inputs, "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}]}
    )
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + binary, headers


class TestFailClosed:
    async def test_body_over_detection_cap(
        self,
        stack: contextlib.AsyncExitStack,
        repository: Path,
        tmp_path: Path,
        http: aiohttp.ClientSession,
    ) -> None:
        """A body over detection.max_body_bytes is not scanned, so it may not leave the site:
        422 detection_failed for an upstream-only model, nothing forwarded; a local model
        still answers (and does not escalate); a small body still goes."""
        site = await start_site(
            stack, repository, bundle_copy(tmp_path, max_body_bytes="max_body_bytes: 600")
        )
        big = chat("gpt-central", f"{'lorem ipsum ' * 60} mail {EMAIL}")
        answer = await post(http, f"{site.url}/v1/chat/completions", big)
        assert answer.status == 422, answer.body
        assert answer.json()["error"]["code"] == "detection_failed"
        assert EMAIL not in answer.body.decode()
        assert site.off_site() == []

        padded = {
            "parameters": {"pad": "x" * 700, "to": EMAIL},
            "inputs": [{"name": "rgb", "datatype": "FP32", "shape": [1, 3], "data": [1, 0, 0]}],
        }
        answer = await post(http, f"{site.url}/v2/models/color_classifier/infer", padded)
        assert answer.status == 200, answer.body
        assert answer.reason == "unscanned,local,escalation_unavailable"
        assert site.off_site() == []

        answer = await post(http, f"{site.url}/v1/chat/completions", chat("gpt-central", EMAIL))
        assert answer.status == 200
        assert_clean(site.off_site(), EMAIL)

    async def test_binary_bytes_tensors(self, site: Site, http: aiohttp.ClientSession) -> None:
        """BYTES tensors in the binary part (tritonclient's default) are read as text: the
        e-mail in one is redacted and the tensor goes upstream as JSON strings, beside an FP32
        tensor that stays binary; the local BYTES model answers such a request as sent."""
        body, headers = binary_bytes_request(f"ship to {EMAIL}", extra_fp32=True)
        answer = await post(
            http, f"{site.url}/v2/models/v2-central/infer", data=body, headers=headers
        )
        assert answer.status == 200, answer.body
        assert_clean(site.off_site(), EMAIL)
        [sent] = site.off_site()
        length = int(sent.headers["Inference-Header-Content-Length"])
        header = orjson.loads(sent.body[:length])
        text, scores = header["inputs"]
        assert text["data"] == ["ship to <EMAIL_1>"]
        assert "binary_data_size" not in text.get("parameters", {})
        assert scores["parameters"]["binary_data_size"] == 8
        assert sent.body[length:] == struct.pack("<2f", 0.5, 0.25)
        body, headers = binary_bytes_request(f"ship to {EMAIL}")
        answer = await post(
            http, f"{site.url}/v2/models/echo_bytes/infer", data=body, headers=headers
        )
        assert answer.status == 200, answer.body
        assert answer.json()["outputs"][0]["data"] == [f"ship to {EMAIL}"]

    async def test_clean_binary_bytes_go_as_they_came(
        self, site: Site, http: aiohttp.ClientSession
    ) -> None:
        """Nothing found in a binary BYTES tensor: the body is forwarded byte for byte."""
        body, headers = binary_bytes_request("nothing personal here")
        answer = await post(
            http, f"{site.url}/v2/models/v2-central/infer", data=body, headers=headers
        )
        assert answer.status == 200, answer.body
        [sent] = site.off_site()
        length = int(sent.headers["Inference-Header-Content-Length"])
        assert sent.body[length:] == body[int(headers["Inference-Header-Content-Length"]) :]

    async def test_unreadable_binary_bytes_stay_on_the_site(
        self, site: Site, http: aiohttp.ClientSession
    ) -> None:
        """A binary BYTES element that is not UTF-8 cannot be scanned: an upstream-only model
        answers 422 and receives nothing."""
        body, headers = binary_bytes_request(b"\xff\xfe" + EMAIL.encode())
        answer = await post(
            http, f"{site.url}/v2/models/v2-central/infer", data=body, headers=headers
        )
        assert answer.status == 422, answer.body
        assert "could not be checked for sensitive data" in answer.json()["error"]
        assert EMAIL not in answer.body.decode(errors="replace")
        assert site.off_site() == []

    async def test_fail_open_path(
        self,
        stack: contextlib.AsyncExitStack,
        repository: Path,
        tmp_path: Path,
        http: aiohttp.ClientSession,
    ) -> None:
        """A route the bundle marks fail-open passes an unscannable request on as it came,
        saying so in X-Route-Reason; other routes still fail closed."""
        bundle = bundle_copy(
            tmp_path,
            max_body_bytes="max_body_bytes: 600",
            fail_open_paths='fail_open_paths: ["/v1/chat/"]',
        )
        site = await start_site(stack, repository, bundle)
        big = chat("gpt-central", f"{'lorem ipsum ' * 60} mail {EMAIL}")
        answer = await post(http, f"{site.url}/v1/chat/completions", big)
        assert answer.status == 200, answer.body
        assert answer.reason == "detection_failed_open,forward:central"
        assert "X-Redactions" not in answer.headers
        assert orjson.loads(site.central.received[0].body) == big

        answer = await post(
            http, f"{site.url}/v1/embeddings", {"model": "gpt-central", "input": ["x" * 700]}
        )
        assert answer.status == 422
        assert len(site.central.received) == 1
