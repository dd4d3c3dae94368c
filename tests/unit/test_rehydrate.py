"""Rehydration of text, JSON answers and SSE streams (TESTING.md P6 and P7)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.forwarding import _rehydrated
from router.redaction import rehydrate
from router.redaction.actions import Hasher
from router.redaction.rehydrate import (
    SseRehydrator,
    rehydrate_json,
    rehydrate_text,
    rehydrate_v2_binary,
)
from router.redaction.types import Finding
from router.redaction.vault import TOKEN_RE, TokenVault
from router.redaction.walker import RedactionPlan, redact_json

EMAIL = "alice@example.com"
CARD = "4111 1111 1111 1111"
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
SECRET = b"site-secret-for-tests-0123456789"


class EmailScanner:
    def scan(self, text: str) -> tuple[str, list[Finding]]:
        return text, [Finding("EMAIL", m.start(), m.end()) for m in EMAIL_RE.finditer(text)]


@pytest.fixture
def vault() -> TokenVault:
    vault = TokenVault()
    assert vault.token_for("EMAIL", EMAIL) == "<EMAIL_1>"
    assert vault.token_for("CARD", CARD) == "<CARD_1>"
    return vault


# -- SSE helpers ------------------------------------------------------------------------------


def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return {**base, "choices": choices, **extra}


def delta(content: str | None, index: int = 0, finish: str | None = None) -> dict[str, Any]:
    d = {} if content is None else {"content": content}
    return {"index": index, "delta": d, "finish_reason": finish}


def sse(events: list[dict[str, Any] | str], sep: bytes = b"\n\n") -> bytes:
    return b"".join(
        b"data: " + (e.encode() if isinstance(e, str) else orjson.dumps(e)) + sep for e in events
    )


def chat_stream(deltas: list[str]) -> bytes:
    """A whole chat stream: role chunk, deltas, finish, usage and [DONE]."""
    events: list[dict[str, Any] | str] = [chunk([{"index": 0, "delta": {"role": "assistant"}}])]
    events += [chunk([delta(d)]) for d in deltas]
    events.append(chunk([delta(None, finish="stop")]))
    events.append(chunk([], usage={"prompt_tokens": 3, "completion_tokens": 5}))
    events.append("[DONE]")
    return sse(events)


def events_of(out: bytes) -> Iterator[dict[str, Any] | str]:
    """The data payloads of an SSE byte stream, parsed (every one must be valid)."""
    # Split on LF only: str.splitlines would also split inside JSON strings (U+2028, U+0085).
    for line in out.decode("utf-8").split("\n"):
        if line.startswith("data:"):
            payload = line[5:].strip()
            yield payload if payload == "[DONE]" else orjson.loads(payload)


def texts(out: bytes, field: str = "content") -> dict[int, str]:
    """What a client accumulates per choice from delta[field] (or `text` for completions)."""
    acc: dict[int, str] = {}
    for event in events_of(out):
        if isinstance(event, str):
            continue
        for choice in event["choices"]:
            value = choice.get("text") if field == "text" else choice["delta"].get(field)
            if value:
                acc[choice["index"]] = acc.get(choice["index"], "") + value
    return acc


def run(vault: TokenVault, chunks: list[bytes]) -> bytes:
    rehydrator = SseRehydrator(vault)
    return b"".join(rehydrator.feed(c) for c in chunks) + rehydrator.close()


# -- tests ------------------------------------------------------------------------------------


class TestRehydrateText:
    def test_restores_issued_tokens(self, vault: TokenVault) -> None:
        """Every issued token is replaced by its value, however often it appears."""
        text = "<EMAIL_1>, <CARD_1> and <EMAIL_1> again"
        assert rehydrate_text(text, vault) == f"{EMAIL}, {CARD} and {EMAIL} again"

    @pytest.mark.parametrize(
        "text",
        ["<EMAIL_2>", "<email_1>", "< EMAIL_1>", "<EMAIL_1", "EMAIL_1>", "<EMAIL_01>", "<<>>"],
    )
    def test_unknown_and_mangled_left_as_they_are(self, vault: TokenVault, text: str) -> None:
        """Tokens the vault never issued, or mangled ones, are not touched."""
        assert rehydrate_text(text, vault) == text

    def test_other_requests_tokens_stay(self) -> None:
        """A vault restores only its own tokens, never those of another request."""
        theirs, mine = TokenVault(), TokenVault()
        theirs.token_for("CARD", CARD)
        mine.token_for("EMAIL", EMAIL)
        assert rehydrate_text("<CARD_1> <EMAIL_1>", mine) == f"<CARD_1> {EMAIL}"

    def test_reserved_placeholders_are_never_issued(self) -> None:
        """Placeholders the request holds itself are skipped, and stay unrestored."""
        vault = TokenVault(reserved=["<EMAIL_1>", "<EMAIL_2>", "<CARD_3>"])
        assert vault.token_for("EMAIL", "a@b.org") == "<EMAIL_3>"
        assert vault.token_for("EMAIL", "c@d.org") == "<EMAIL_4>"
        assert vault.token_for("CARD", "4111111111111111") == "<CARD_1>"
        assert rehydrate_text("<EMAIL_1> <EMAIL_3>", vault) == "<EMAIL_1> a@b.org"

    def test_json_escaped(self) -> None:
        """In JSON source, values are inserted escaped so the document stays valid."""
        vault = TokenVault()
        vault.token_for("NAME", 'O"Brien\\')
        out = rehydrate_text('{"n": "<NAME_1>"}', vault, json_escaped=True)
        assert orjson.loads(out) == {"n": 'O"Brien\\'}

    def test_empty_vault_is_identity(self) -> None:
        """With nothing issued the text comes back as the same object."""
        text = "<EMAIL_1>"
        assert rehydrate_text(text, TokenVault()) is text


class TestRehydrateJson:
    def test_strings_and_keys(self, vault: TokenVault) -> None:
        """Tokens are restored in every string and key at any depth; other values pass."""
        doc = {"a": [{"<EMAIL_1>": ["x <CARD_1>", 1, None, True]}], "n": 2.5}
        assert rehydrate_json(doc, vault) == {
            "a": [{EMAIL: [f"x {CARD}", 1, None, True]}],
            "n": 2.5,
        }

    def test_tool_arguments_stay_valid_json(self) -> None:
        """A value with quotes restored inside JSON arguments keeps them valid."""
        vault = TokenVault()
        vault.token_for("NAME", 'say "hi"')
        doc = {"arguments": '{"text": "<NAME_1>"}'}
        out = rehydrate_json(doc, vault)
        assert orjson.loads(out["arguments"]) == {"text": 'say "hi"'}

    def test_json_text_keeps_its_layout_and_numbers(self) -> None:
        """A structured-output answer (a JSON text in `content`) has its tokens restored where
        they stand: its layout and number literals stay as the upstream wrote them (a parse
        re-encoded made 12345678901234567890123 a float, 1.2345678901234568e+22)."""
        vault = TokenVault()
        token = vault.token_for("EMAIL", "a@b.com")
        written = '{\n  "email": "%s",\n  "order": 12345678901234567890123,\n  "price": 19.90\n}'
        doc = {"choices": [{"message": {"content": written % token}}]}
        out = rehydrate_json(doc, vault)
        assert out["choices"][0]["message"]["content"] == written % "a@b.com"

    def test_nested_json_text_still_valid(self) -> None:
        """A value with quotes restored in a JSON text nested in a JSON text's string keeps
        both valid."""
        vault = TokenVault()
        token = vault.token_for("NAME", 'say "hi"')
        inner = orjson.dumps({"text": token}).decode()
        doc = {"arguments": orjson.dumps({"payload": inner}).decode()}
        out = orjson.loads(rehydrate_json(doc, vault)["arguments"])
        assert orjson.loads(out["payload"]) == {"text": 'say "hi"'}

    def test_input_not_mutated(self, vault: TokenVault) -> None:
        """The upstream's parsed document is left as it was."""
        doc = {"choices": [{"message": {"content": "<EMAIL_1>"}}]}
        rehydrate_json(doc, vault)
        assert doc == {"choices": [{"message": {"content": "<EMAIL_1>"}}]}


class TestConcurrentRequests:
    """P6: many requests with their own vaults, answered in any order from several threads."""

    def test_ten_thousand_responses(self) -> None:
        """Every echoed token is restored for its own request; tokens it never issued stay."""
        n = 10_000
        rng = random.Random(6)
        scanner, hasher, plan = EmailScanner(), Hasher(SECRET), RedactionPlan()
        # Request i carries 1 to 3 unique canary emails; every answer echoes three tokens.
        canaries = [
            [f"c{i}.{k}.{rng.getrandbits(40):010x}@example.com" for k in range(i % 3 + 1)]
            for i in range(n)
        ]
        vaults = [TokenVault() for _ in range(n)]
        sent = [
            redact_json({"content": " ".join(c)}, plan, scanner, v, hasher)[0]["content"]
            for c, v in zip(canaries, vaults, strict=True)
        ]
        assert not any("@" in s for s in sent)
        answer = "to <EMAIL_1>, <EMAIL_2> and <EMAIL_3>"

        def respond(i: int) -> tuple[int, Any]:
            doc = {"choices": [{"message": {"content": answer, "tool_calls": [
                {"function": {"arguments": '{"to": ["<EMAIL_1>", "<EMAIL_3>"]}'}}
            ]}}]}  # fmt: skip
            return i, rehydrate_json(doc, vaults[i])

        order = list(range(n))
        rng.shuffle(order)
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = dict(pool.map(respond, order))

        for i in range(n):
            own = canaries[i] + ["<EMAIL_2>", "<EMAIL_3>"][len(canaries[i]) - 1 :]
            message = results[i]["choices"][0]["message"]
            assert message["content"] == f"to {own[0]}, {own[1]} and {own[2]}"
            args = orjson.loads(message["tool_calls"][0]["function"]["arguments"])
            assert args == {"to": [own[0], own[2]]}

    def test_streams_interleaved(self) -> None:
        """Streams fed alternately chunk by chunk restore only their own tokens."""
        vaults = [TokenVault() for _ in range(50)]
        values = [f"user{i}@example.com" for i in range(50)]
        for v, value in zip(vaults, values, strict=True):
            v.token_for("EMAIL", value)
        stream = chat_stream(["Hi <EM", "AIL_1> and <EMAIL_2>"])
        rehydrators = [SseRehydrator(v) for v in vaults]
        outs = [bytearray() for _ in vaults]
        for start in range(0, len(stream), 7):
            for r, out in zip(rehydrators, outs, strict=True):
                out += r.feed(stream[start : start + 7])
        for r, out, value in zip(rehydrators, outs, values, strict=True):
            out += r.close()
            assert texts(bytes(out)) == {0: f"Hi {value} and <EMAIL_2>"}


class TestSseRehydrator:
    TEXT = f"Write to <EMAIL_1> now, pay with <CARD_1>. Danke schön 😀 {'x' * 20}"
    RESTORED = TEXT.replace("<EMAIL_1>", EMAIL).replace("<CARD_1>", CARD)

    def check(self, out: bytes) -> None:
        assert texts(out) == {0: self.RESTORED}
        assert not TOKEN_RE.search(out.decode("utf-8"))
        events = list(events_of(out))
        assert events[-1] == "[DONE]"
        assert events[-2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 5}  # type: ignore[index]

    def test_split_at_every_byte_and_event_offset(self, vault: TokenVault) -> None:
        """P7: each token split between two events at every offset, the stream cut at every byte."""
        runs = 0
        for token in ("<EMAIL_1>", "<CARD_1>"):
            at = self.TEXT.index(token)
            for k in range(1, len(token)):
                stream = chat_stream([self.TEXT[: at + k], self.TEXT[at + k :]])
                for b in range(1, len(stream)):
                    self.check(run(vault, [stream[:b], stream[b:]]))
                    runs += 1
        assert runs > 10_000

    def test_one_character_per_event_one_byte_per_chunk(self, vault: TokenVault) -> None:
        """Tokens spread over many events and chunks are restored; holding stays under a token."""
        stream = chat_stream(list(self.TEXT))
        rehydrator = SseRehydrator(vault)
        out = bytearray()
        longest_line = max(len(line) for line in stream.split(b"\n"))
        for i in range(len(stream)):
            out += rehydrator.feed(stream[i : i + 1])
            assert rehydrator.held_chars < vault.max_token_length
            assert rehydrator.buffered_bytes <= longest_line
        out += rehydrator.close()
        self.check(bytes(out))

    def test_no_whole_stream_buffering(self, vault: TokenVault) -> None:
        """Text goes out as events complete: before the last chunk, all but a partial token."""
        pieces = ["Hello <EMA", "IL_1>, "] * 100 + ["bye <CA", "RD_1"]
        stream = chat_stream(pieces)
        cut = stream.index(b'"RD_1"')  # the last text event is still to come
        rehydrator = SseRehydrator(vault)
        early = b"".join(rehydrator.feed(stream[i : min(i + 13, cut)]) for i in range(0, cut, 13))
        got = texts(early)[0]
        expected = "".join(pieces).replace("<EMAIL_1>", EMAIL)
        assert expected.startswith(got)
        assert got.endswith(f"{EMAIL}, bye ")
        assert rehydrator.held_chars == len("<CA")
        rest = rehydrator.feed(stream[cut:]) + rehydrator.close()
        assert texts(early + rest)[0] == expected

    def test_tool_call_arguments(self) -> None:
        """Argument deltas restore split tokens with the value JSON-escaped."""
        vault = TokenVault()
        vault.token_for("NAME", 'Jo "J" Doe')
        parts = ['{"name": "', "<NA", "ME_1", '>", "n": 1}']
        events: list[dict[str, Any] | str] = [
            chunk([{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "t", "function": {"name": "f", "arguments": p}}
            ]}}]) for p in parts
        ]  # fmt: skip
        events += [chunk([delta(None, finish="tool_calls")]), "[DONE]"]
        out = run(vault, [sse(events)])
        arguments = "".join(
            call["function"]["arguments"]
            for e in events_of(out)
            if not isinstance(e, str)
            for call in e["choices"][0]["delta"].get("tool_calls", [])
        )
        assert orjson.loads(arguments) == {"name": 'Jo "J" Doe', "n": 1}

    def test_reasoning_and_other_fields(self, vault: TokenVault) -> None:
        """`delta.reasoning` (vLLM, OpenRouter) restores split tokens like content does, and a
        whole token in any other field (an audio transcript) is restored as a plain answer's."""
        events: list[dict[str, Any] | str] = [
            chunk([{"index": 0, "delta": {"reasoning": r}, "finish_reason": None}])
            for r in ("mail <EM", "AIL_1> now")
        ]
        audio = {"index": 0, "delta": {"audio": {"transcript": "card <CARD_1>"}}}
        events += [chunk([audio]), chunk([delta(None, finish="stop")]), "[DONE]"]
        out = run(vault, [sse(events)])
        assert texts(out, "reasoning") == {0: f"mail {EMAIL} now"}
        transcripts = [
            c["delta"]["audio"]["transcript"]
            for e in events_of(out)
            if not isinstance(e, str)
            for c in e["choices"]
            if "audio" in c["delta"]
        ]
        assert transcripts == [f"card {CARD}"]

    def test_content_parts_restored(self, vault: TokenVault) -> None:
        """A delta whose content is a list of parts (as Mistral streams its reasoning models'
        answers) has whole tokens restored in it, as a plain answer's would."""
        parts = [{"type": "text", "text": "mail <EMAIL_1> now"}]
        events: list[dict[str, Any] | str] = [
            chunk([{"index": 0, "delta": {"content": parts}, "finish_reason": None}]),
            chunk([delta(None, finish="stop")]),
            "[DONE]",
        ]
        out = run(vault, [sse(events)])
        first = next(events_of(out))
        assert not isinstance(first, str)
        assert first["choices"][0]["delta"]["content"] == [
            {"type": "text", "text": f"mail {EMAIL} now"}
        ]

    def test_completions_text(self, vault: TokenVault) -> None:
        """Legacy completions streams carry text in choices[i].text."""
        events: list[dict[str, Any] | str] = [
            {"object": "text_completion", "choices": [{"index": 0, "text": t, "finish_reason": f}]}
            for t, f in [("to <EMAIL", None), ("_1> ok", None), ("", "stop")]
        ]
        out = run(vault, [sse([*events, "[DONE]"])])
        assert texts(out, "text") == {0: f"to {EMAIL} ok"}

    def test_choices_held_independently(self, vault: TokenVault) -> None:
        """With n=2, each choice holds and restores its own partial token."""
        stream = sse(
            [
                chunk([delta("a <EMA", 0), delta("b <CA", 1)]),
                chunk([delta("x", 1)]),
                chunk([delta("IL_1>", 0)]),
                chunk([delta("RD_1>", 1)]),
                chunk([delta(None, 0, "stop"), delta(None, 1, "stop")]),
                "[DONE]",
            ]
        )
        assert texts(run(vault, [stream])) == {0: f"a {EMAIL}", 1: "b <CAxRD_1>"}

    def test_held_text_goes_out_with_the_finish_chunk(self, vault: TokenVault) -> None:
        """A partial still held when its choice finishes is released in that event as it is."""
        out = run(vault, [chat_stream(["see <EMAIL_"])])
        assert texts(out) == {0: "see <EMAIL_"}
        finish = [e for e in events_of(out) if not isinstance(e, str) and e["choices"]][-1]
        assert finish["choices"][0] == {
            "index": 0,
            "delta": {"content": "<EMAIL_"},
            "finish_reason": "stop",
        }

    def test_flushed_before_done(self, vault: TokenVault) -> None:
        """With no finish chunk, a held partial goes out in its own event before [DONE]."""
        out = run(vault, [sse([chunk([delta("see <CARD")]), "[DONE]"])])
        events = list(events_of(out))
        assert events[-1] == "[DONE]"
        assert texts(out) == {0: "see <CARD"}
        assert events[1]["model"] == "m"  # type: ignore[index]

    def test_flushed_at_close_after_a_cut_stream(self, vault: TokenVault) -> None:
        """A stream cut mid-event still releases what was held, as a separate event."""
        stream = sse([chunk([delta("see <EMAIL")])]) + b'data: {"choices": [{"ind'
        out = run(vault, [stream])
        assert texts(out.replace(b'data: {"choices": [{"ind\n\n', b"")) == {0: "see <EMAIL"}
        assert out.startswith(sse([chunk([delta("see ")])]))

    def test_mangled_tokens_released(self, vault: TokenVault) -> None:
        """Something that starts like a token and turns out not to be one goes out unchanged."""
        out = run(vault, [chat_stream(["<EMAIL_1", " >, <email_1>, <EMAIL_", "2>, <CARD_1"])])
        assert texts(out) == {0: "<EMAIL_1 >, <email_1>, <EMAIL_2>, <CARD_1"}

    def test_other_lines_pass_byte_for_byte(self, vault: TokenVault) -> None:
        """Comments, named events, non-JSON data, usage chunks and [DONE] are not rewritten."""
        stream = b": keep-alive\n\nevent: ping\ndata: not json <EMAIL_1>\n\ndata: [1, 2]\n\n" + sse(
            [chunk([], usage={"total_tokens": 3}), "[DONE]"]
        )
        assert run(vault, [stream]) == stream

    def test_unchanged_events_pass_byte_for_byte(self, vault: TokenVault) -> None:
        """Events without tokens keep their exact bytes (spacing, key order)."""
        stream = b'data:{"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
        assert run(vault, [stream]) == stream

    def test_empty_vault_passes_chunks_through(self) -> None:
        """With no tokens issued the rehydrator returns each chunk as it is."""
        rehydrator = SseRehydrator(TokenVault())
        piece = b'data: {"choices": [{"delta": {"content": "<EMA'
        assert rehydrator.feed(piece) is piece
        assert rehydrator.close() == b""

    def test_crlf_line_endings(self, vault: TokenVault) -> None:
        """Streams using CRLF are restored and keep their line endings."""
        stream = sse([chunk([delta("x <EMA")]), chunk([delta("IL_1>")]), "[DONE]"], b"\r\n\r\n")
        out = run(vault, [stream[i : i + 5] for i in range(0, len(stream), 5)])
        assert texts(out) == {0: f"x {EMAIL}"}
        assert out.count(b"\r\n\r\n") == 3

    def test_cr_line_endings(self, vault: TokenVault) -> None:
        """Streams using bare CR line ends (SSE allows them) are restored at every cut, and a
        tail released before [DONE] is an event of its own."""
        stream = sse([chunk([delta("x <EMA")]), chunk([delta("IL_1> <CA")]), "[DONE]"], b"\r\r")
        for b in range(1, len(stream)):
            out = run(vault, [stream[:b], stream[b:]])
            assert texts(out.replace(b"\r", b"\n")) == {0: f"x {EMAIL} <CA"}
            assert out.endswith(b"\r\rdata: [DONE]\r\r")

    def test_overlong_line_passed_through(
        self, vault: TokenVault, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A line past the size bound is passed on unparsed; the next line is handled again."""
        monkeypatch.setattr(rehydrate, "MAX_LINE_BYTES", 64)
        long = sse([chunk([delta("<EMAIL_1>" + "y" * 100)])])
        short = sse([chunk([delta("<CARD_1>")])])
        out = run(vault, [long[i : i + 10] for i in range(0, len(long), 10)] + [short])
        assert out.startswith(long)
        assert texts(out[len(long) :]) == {0: CARD}


# Pieces of model output: issued, unknown and mangled tokens, bits of tokens and noise.
pieces = st.lists(
    st.sampled_from(
        ["<EMAIL_1>", "<CARD_1>", "<EMAIL_2>", "<EMA", "IL_1>", "<", ">", "_1", "<CARD_"]
    )
    | st.text(max_size=6),
    max_size=12,
)


class TestSseProperties:
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(pieces, min_size=1, max_size=2), st.booleans(), st.data())
    def test_stream_equals_whole_text(
        self, choices: list[list[str]], finish: bool, data: st.DataObject
    ) -> None:
        """Any event split and byte chunking gives each choice exactly its restored whole text."""
        vault = TokenVault()
        vault.token_for("EMAIL", EMAIL)
        vault.token_for("CARD", CARD)
        # Interleave the choices' deltas in a drawn order, then cut the bytes anywhere.
        events: list[dict[str, Any] | str] = []
        left = {i: list(ps) for i, ps in enumerate(choices) if ps}
        while left:
            index = data.draw(st.sampled_from(sorted(left)))
            events.append(chunk([delta(left[index].pop(0), index)]))
            if not left[index]:
                del left[index]
        if finish:
            events.append(chunk([delta(None, i, "stop") for i in range(len(choices))]))
        events.append("[DONE]")
        stream = sse(events)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
        parts = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        got = texts(run(vault, parts))
        expected = {i: rehydrate_text("".join(ps), vault) for i, ps in enumerate(choices)}
        assert got == {i: t for i, t in expected.items() if t}


class TestV2Binary:
    @staticmethod
    def _answer(elements: list[bytes], floats: bytes = b"\x00" * 8) -> tuple[bytes, int]:
        data = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
        header = orjson.dumps(
            {
                "model_name": "m <EMAIL_1>",
                "outputs": [
                    {"name": "f", "datatype": "FP32", "shape": [2],
                     "parameters": {"binary_data_size": len(floats)}},
                    {"name": "s", "datatype": "BYTES", "shape": [len(elements)],
                     "parameters": {"binary_data_size": len(data)}},
                ],
            }
        )  # fmt: skip
        return header + floats + data, len(header)

    def test_bytes_elements_and_header_restored(self, vault: TokenVault) -> None:
        """Tokens in BYTES elements and header strings are restored; other outputs' bytes
        and non-UTF-8 elements pass as they were; sizes and the header length follow."""
        body, length = self._answer([b"to <EMAIL_1>", b"\xff<CARD_1>", b"<CARD_1>"])
        new, new_length = rehydrate_v2_binary(body, length, vault)
        header = orjson.loads(new[:new_length])
        assert header["model_name"] == f"m {EMAIL}"
        size = header["outputs"][1]["parameters"]["binary_data_size"]
        assert new[new_length : new_length + 8] == b"\x00" * 8
        data = new[new_length + 8 :]
        assert len(data) == size
        expected = [f"to {EMAIL}".encode(), b"\xff<CARD_1>", CARD.encode()]
        assert data == b"".join(len(e).to_bytes(4, "little") + e for e in expected)

    def test_parts_that_do_not_add_up_pass_unchanged(self, vault: TokenVault) -> None:
        """A body longer or shorter than its header says is relayed as it came."""
        body, length = self._answer([b"to <EMAIL_1>"])
        for broken in (body + b"x", body[:-1]):
            assert rehydrate_v2_binary(broken, length, vault) == (broken, length)


class TestNonFiniteAnswers:
    """A JSON answer with Triton's bare NaN/Infinity tokens (orjson refuses them) still gets
    its tokens restored, and keeps the tokens as Triton wrote them."""

    def test_tokens_restored_and_non_finite_kept(self, vault: TokenVault) -> None:
        """The caller's e-mail comes back; NaN, Infinity and -Infinity stay bare tokens."""
        token = vault.token_for("EMAIL", EMAIL)
        body = (
            '{"outputs":[{"name":"y","datatype":"FP32","shape":[3],"data":[NaN,Infinity,'
            f'-Infinity]}},{{"name":"who","datatype":"BYTES","shape":[1],"data":["{token}"]}}]}}'
        ).encode()
        out = _rehydrated(body, "application/json", {}, vault)
        assert token.encode() not in out
        assert EMAIL.encode() in out
        assert b"[NaN,Infinity,-Infinity]" in out

    def test_unreadable_answer_stays_as_it_is(self, vault: TokenVault) -> None:
        """Neither orjson nor the stdlib can read it: passed on unchanged, as before."""
        vault.token_for("EMAIL", EMAIL)
        body = b'{"data":[NaN,'
        assert _rehydrated(body, "application/json", {}, vault) == body

    def test_binary_answer_whose_header_holds_non_finite_values(self, vault: TokenVault) -> None:
        """A binary answer (a BYTES output binary, an FP32 one as JSON holding NaN, as Triton
        and a layer-router write it) gets its tokens restored, NaN and Infinity kept bare."""
        token = vault.token_for("EMAIL", EMAIL)
        element = f"to {token}".encode()
        data = len(element).to_bytes(4, "little") + element
        header = (
            '{"outputs":[{"name":"y","datatype":"FP32","shape":[2],"data":[NaN,-Infinity]},'
            '{"name":"s","datatype":"BYTES","shape":[1],'
            f'"parameters":{{"binary_data_size":{len(data)}}}}}]}}'
        ).encode()
        headers = {"Inference-Header-Content-Length": str(len(header))}
        out = _rehydrated(header + data, "application/octet-stream", headers, vault)
        length = int(headers["Inference-Header-Content-Length"])
        assert b"[NaN,-Infinity]" in out[:length]
        restored = f"to {EMAIL}".encode()
        assert out[length:] == len(restored).to_bytes(4, "little") + restored
        assert f'"binary_data_size":{len(restored) + 4}'.encode() in out[:length]

    def test_lone_surrogate_escape_is_kept_escaped(self, vault: TokenVault) -> None:
        """A string with a lone surrogate escape (valid JSON, which orjson refuses) gets its
        tokens restored and the escape kept, in a JSON answer and a binary one's header,
        instead of failing the request with an encoding error."""
        token = vault.token_for("EMAIL", EMAIL)
        header = f'{{"outputs":[{{"name":"s","data":["\\ud800 {token}","é"]}}]}}'.encode()
        out = _rehydrated(header, "application/json", {}, vault)
        assert json.loads(out)["outputs"][0]["data"] == [f"\ud800 {EMAIL}", "é"]
        headers = {"Inference-Header-Content-Length": str(len(header))}
        out = _rehydrated(header, "application/octet-stream", headers, vault)
        assert len(out) == int(headers["Inference-Header-Content-Length"])
        assert json.loads(out)["outputs"][0]["data"] == [f"\ud800 {EMAIL}", "é"]
