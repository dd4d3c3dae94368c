"""The demo's LLM: a MOCK OpenAI-compatible upstream behind the central tier (no model runs).

It answers chat, completions and embeddings by echoing the last user message as it arrived,
which shows what redaction left of a request by the time it reached central."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from router.testing.upstream import Behaviour, FakeUpstream

NAME = "mock-llm (demo mock, not a real model)"


@dataclass
class MockLLM(FakeUpstream):
    """The test kit's fake, answering `/v1/completions` in the text-completion shape: the
    fake's chat shape there left `choices[0].text` empty for an openai SDK's `completions`."""

    def _completion(self, doc: dict[str, Any]) -> dict[str, Any]:
        if "prompt" not in doc:
            return super()._completion(doc)
        choice = {"index": 0, "text": self._text(doc), "logprobs": None, "finish_reason": "stop"}
        return {**_text_head(doc), "choices": [choice], "usage": super()._completion(doc)["usage"]}

    async def _stream(self, request: web.Request, doc: dict[str, Any]) -> web.StreamResponse:
        if "prompt" not in doc:
            return await super()._stream(request, doc)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        text = self._text(doc)
        size = max(1, -(-len(text) // max(1, self.behaviour.stream_chunks)))
        pieces: list[tuple[str, str | None]] = [
            (text[i : i + size], None) for i in range(0, len(text), size)
        ]
        for piece, finish in [*pieces, ("", "stop")]:
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
            event = {**_text_head(doc), "choices": [choice]}
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _text_head(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": "cmpl-mock", "object": "text_completion", "created": 0, "model": doc.get("model")}


def mock_llm_app(model: str) -> web.Application:
    fake = MockLLM(name=NAME, models=(model,), behaviour=Behaviour(stream_chunks=6))
    app = fake.app()

    async def forget(request: web.Request, response: web.StreamResponse) -> None:
        fake.received.clear()  # the test double records requests; a long demo must not grow

    app.on_response_prepare.append(forget)
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the mock on its own (the compose example runs it as the central tier's LLM)."""
    import argparse

    from router.flags import port

    parser = argparse.ArgumentParser(description="a MOCK OpenAI-compatible upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port, default=8000)
    parser.add_argument("--model", default="mock-llm")
    args = parser.parse_args(argv)
    web.run_app(mock_llm_app(args.model), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
