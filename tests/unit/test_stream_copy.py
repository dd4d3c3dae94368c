"""A streamed answer's copy for its spool sample (router.stream_copy) and its sample
(StoreAndForward.sample_stream): the SSE events as a client reads them, each choice's text
joined whole, no sample from a stream carrying an error event, cut, or over its bound."""

from __future__ import annotations

import re
import shutil
import threading
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.context import Reply, RequestContext
from router.policy.bundle import load_bundle
from router.privacy import MemoScanner, Privacy
from router.redaction.vault import TOKEN_RE, TokenVault
from router.redaction.walker import redact_json
from router.resources import default_policy_bundle
from router.stages.classify import OFF_LOOP_BYTES
from router.store_forward import StoreAndForward
from router.stream_copy import StreamCopy, sampled_events
from router.trail import CLIENT_GONE


def event(doc: Any) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": choices}


async def chunks_of(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class TestSampledEvents:
    def test_events_as_a_client_reads_them(self) -> None:
        """CRLF and bare-CR line ends, comments, `data` without a space, an event's data lines
        joined with LF, a last event without its empty line; [DONE] and empty data left out;
        non-JSON data kept as its text."""
        stream = (
            b": a comment\r\n\r\n"
            b'data:{"a": 1}\r\n\r\n'
            b"event: note\rdata: plain\rdata: text\r\r"
            b"data:\n\n"
            b"data: [DONE]\n\n"
            b'data: {"b": 2}'
        )
        assert sampled_events([stream[:7], stream[7:]]) == [{"a": 1}, "plain\ntext", {"b": 2}]

    def test_a_line_break_json_may_hold_raw_ends_no_line(self) -> None:
        """U+2028 inside a JSON string is no SSE line end (str.splitlines would cut there)."""
        doc = {"text": "one\u2028two"}
        assert sampled_events([event(doc)]) == [doc]

    def test_each_choices_text_is_joined_into_the_event_that_began_it(self) -> None:
        """Content, reasoning and each tool call's arguments, per choice index, made whole in
        their first event and emptied in the later ones; other fields stay as they were."""
        events = [
            chunk([{"index": 0, "delta": {"role": "assistant", "content": "wri"}}]),
            chunk([{"index": 1, "delta": {"content": "other "}}]),
            chunk([{"index": 0, "delta": {"content": "te to a@b"}, "finish_reason": None}]),
            chunk([{"index": 1, "delta": {"reasoning_content": "hm"}}]),
            chunk([{"index": 0, "delta": {"content": ".com"}, "finish_reason": "stop"}]),
            chunk([{"index": 1, "delta": {"content": "one"}}]),
            chunk(
                [
                    {
                        "index": 1,
                        "delta": {
                            "tool_calls": [
                                {"index": 0, "function": {"name": "f", "arguments": '{"x": "4'}},
                                {"index": 1, "function": {"arguments": "{}"}},
                            ]
                        },
                    }
                ]
            ),
            chunk(
                [
                    {
                        "index": 1,
                        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '2"}'}}]},
                    }
                ]
            ),
        ]
        joined = sampled_events([event(e) for e in events])
        assert joined is not None
        assert joined[0]["choices"][0]["delta"] == {
            "role": "assistant",
            "content": "write to a@b.com",
        }
        assert joined[2]["choices"][0]["delta"]["content"] == ""
        assert joined[4]["choices"][0] == {
            "index": 0,
            "delta": {"content": ""},
            "finish_reason": "stop",
        }
        assert joined[1]["choices"][0]["delta"]["content"] == "other one"
        assert joined[3]["choices"][0]["delta"]["reasoning_content"] == "hm"
        calls = joined[6]["choices"][0]["delta"]["tool_calls"]
        assert calls[0]["function"] == {"name": "f", "arguments": '{"x": "42"}'}
        assert calls[1]["function"] == {"arguments": "{}"}

    def test_completions_text_is_joined_too(self) -> None:
        """A text completion's `text` pieces are one text."""
        pieces = [chunk([{"index": 0, "text": t}]) for t in ("40", "11 1111", " 1111 1111")]
        joined = sampled_events([event(e) for e in pieces])
        assert joined is not None
        assert [e["choices"][0]["text"] for e in joined] == ["4011 1111 1111 1111", "", ""]

    def test_a_stream_with_an_error_event_is_no_answer(self) -> None:
        """An error event (an upstream's, a chained router's) after some text: no events."""
        stream = [event(chunk([{"index": 0, "delta": {"content": "hi"}}]))]
        stream.append(event({"error": {"message": "broke", "code": "stream_broken"}}))
        assert sampled_events(stream) is None


class TestStreamCopy:
    async def test_copies_what_passes_and_says_it_ended(self) -> None:
        """Every chunk passes on as it came and is kept; `ended` once the source ran out."""
        copy = StreamCopy(limit=10)
        out = [c async for c in copy.passing(chunks_of([b"abc", b"defg"]))]
        assert out == [b"abc", b"defg"]
        assert copy.chunks == out
        assert copy.ended
        assert not copy.over

    async def test_past_its_limit_the_copy_is_dropped_not_the_stream(self) -> None:
        """Over the bound, nothing is kept (never a part passed as the whole), all still
        passes on."""
        copy = StreamCopy(limit=5)
        out = [c async for c in copy.passing(chunks_of([b"abc", b"defg", b"h"]))]
        assert out == [b"abc", b"defg", b"h"]
        assert copy.over
        assert copy.chunks == []
        assert copy.size == 7

    async def test_closed_early_it_closes_its_source_and_has_not_ended(self) -> None:
        """A stream cut short (the client gone): the source is closed at once, no end seen."""
        closed: list[bool] = []

        async def source() -> AsyncIterator[bytes]:
            try:
                yield b"a"
                yield b"b"
            finally:
                closed.append(True)

        copy = StreamCopy(limit=10)
        passing = copy.passing(source())
        assert await anext(passing) == b"a"
        await passing.aclose()
        assert closed == [True]
        assert not copy.ended


class RecordingSpool:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    async def put(self, kind: str, payload: bytes, key: str = "") -> str:
        self.payloads.append(payload)
        return key


@pytest.fixture
def privacy(tmp_path: Path) -> Privacy:
    bundle = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), bundle)
    (bundle / "sampling.yaml").write_text("default: 1.0\n", encoding="utf-8")
    return Privacy.build(load_bundle(bundle), None, b"s" * 32)


def scanned_chat(privacy: Privacy, asked: str) -> RequestContext:
    """A chat request's context as classification leaves it: scanned, its values known."""
    scanner = MemoScanner(privacy.detectors, privacy.bundle.detection.max_body_bytes, 5.0)
    document: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": asked}]}
    found: Counter[str] = Counter()
    redact_json(document, privacy.survey, scanner, TokenVault(), privacy.hasher, seen=found)
    ctx = RequestContext(
        api="openai", model="m", version=None, deadline=0.0, document=document, scanner=scanner
    )
    ctx.entities = found
    ctx.audit_id = "a1"
    return ctx


async def streamed_sample(
    privacy: Privacy, ctx: RequestContext, parts: list[bytes]
) -> list[dict[str, Any]]:
    """The samples spooled for a stream of `parts` that went out whole."""
    spool = RecordingSpool()
    store = StoreAndForward(spool, privacy, "site-1")  # type: ignore[arg-type]
    reply = Reply(b"", "text/event-stream", stream=chunks_of(parts))
    copy = store.stream_copy(ctx, reply)
    assert copy is not None
    assert reply.stream is not None
    async for _ in copy.passing(reply.stream):
        pass
    store.sample_stream(ctx, copy)
    await store.drain_pending()
    return [orjson.loads(p) for p in spool.payloads]


async def test_a_streamed_sample_holds_its_events_desensitized(privacy: Privacy) -> None:
    """The request's value, echoed whole in one event, and a card only the answer holds,
    split between two: both tokens in the sample, the request's counts left as they were."""
    email = "stream.sample.canary@example.com"
    ctx = scanned_chat(privacy, f"mail {email}")
    served = Counter({"SERVED": 1})
    ctx.redactions = served
    parts = [
        event(chunk([{"index": 0, "delta": {"role": "assistant", "content": f"ok {email}, "}}])),
        event(chunk([{"index": 0, "delta": {"content": "card 4111 1111"}}])),
        event(chunk([{"index": 0, "delta": {"content": " 1111 1111"}, "finish_reason": "stop"}])),
        b"data: [DONE]\n\n",
    ]
    (sample,) = await streamed_sample(privacy, ctx, parts)
    raw = orjson.dumps(sample)
    assert email.encode() not in raw
    assert b"4111" not in raw
    assert sample["streamed"] is True
    assert len(sample["response"]) == 3
    text = sample["response"][0]["choices"][0]["delta"]["content"]
    match = re.fullmatch(rf"ok ({TOKEN_RE.pattern}), card ({TOKEN_RE.pattern})", text)
    assert match is not None, text
    assert sample["request"]["messages"][0]["content"] == f"mail {match[1]}"
    assert ctx.redactions == served


@pytest.mark.parametrize(
    "ending",
    [
        event({"error": {"message": "upstream broke", "code": "stream_broken"}}),
        b"",  # whole, but its record says the client left
    ],
)
async def test_no_sample_of_a_stream_that_was_no_complete_answer(
    privacy: Privacy, ending: bytes
) -> None:
    """An error event in the stream, or a client gone: no sample (a whole one: one)."""
    ctx = scanned_chat(privacy, "hello")
    parts = [event(chunk([{"index": 0, "delta": {"content": "hi"}}]))]
    assert len(await streamed_sample(privacy, ctx, parts)) == 1
    ctx = scanned_chat(privacy, "hello")
    if not ending:
        ctx.reasons.append(CLIENT_GONE)
    assert await streamed_sample(privacy, ctx, [*parts, ending]) == []


async def test_a_long_stream_is_sampled_off_the_loop(
    privacy: Privacy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream past OFF_LOOP_BYTES is redacted on a worker thread, its sample whole."""
    threads: list[str] = []
    real = StoreAndForward._streamed_sample

    def watched(self: StoreAndForward, ctx: RequestContext, chunks: list[bytes]) -> bytes | None:
        threads.append(threading.current_thread().name)
        return real(self, ctx, chunks)

    monkeypatch.setattr(StoreAndForward, "_streamed_sample", watched)
    ctx = scanned_chat(privacy, "a long one")
    words = [event(chunk([{"index": 0, "delta": {"content": "word "}}]))] * 1000
    card = [
        event(chunk([{"index": 0, "delta": {"content": p}}])) for p in ("4111 11", "11 1111 1111")
    ]
    (sample,) = await streamed_sample(privacy, ctx, [*words, *card])
    assert threads
    assert threads[0] != threading.main_thread().name
    assert sum(len(p) for p in [*words, *card]) > OFF_LOOP_BYTES
    text = sample["response"][0]["choices"][0]["delta"]["content"]
    assert re.fullmatch(rf"(word ){{1000}}{TOKEN_RE.pattern}", text), text[-40:]
