"""The demo's LLM: a MOCK OpenAI-compatible upstream behind the central tier (no model runs).

It answers chat, completions and embeddings by echoing the last user message as it arrived,
which shows what redaction left of a request by the time it reached central."""

from __future__ import annotations

from aiohttp import web

from router.testing.upstream import Behaviour, FakeUpstream

NAME = "mock-llm (demo mock, not a real model)"


def mock_llm_app(model: str) -> web.Application:
    fake = FakeUpstream(name=NAME, models=(model,), behaviour=Behaviour(stream_chunks=6))
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
