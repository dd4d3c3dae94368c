"""A large JSON request body is parsed (and its JSON tensors decoded) on the CPU executor,
not on the event loop, which keeps answering other requests meanwhile; a small body is parsed
inline. (orjson holds the GIL while it parses, so how long the loop waits on a single huge
parse is measured in the benchmarks, not asserted here.)"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
from multidict import CIMultiDict

import router.stages.parse as parse_module
from router.context import RequestContext
from router.settings import Settings
from router.stages.parse import OFF_LOOP_JSON_BYTES, ParseInferRequest, ParseOpenAIRequest
from router.testing import RouterThread, identity_model, write_repository

WAIT_S = 5.0


def v2_body(values: int) -> bytes:
    data = [round(0.001 * n, 3) for n in range(values)]
    return orjson.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, values], "datatype": "FP32", "data": data}]}
    )


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterThread]:
    repository = write_repository(
        tmp_path_factory.mktemp("repo"), {"ident": {1: identity_model("FP32")}}
    )
    settings = Settings.model_validate(
        {"models": {"repository": repository, "inference_threads": 1}, "cache": {"enabled": False}}
    )
    with RouterThread(settings) as running:
        yield running


class HeldParse:
    """Wraps parse_header: notes the thread it runs on and, for a large body, holds the parse
    until the test has had another request answered (or gives up after WAIT_S)."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.parsing = threading.Event()
        self.answered = threading.Event()
        self.threads: list[str] = []
        self.served_meanwhile: list[bool] = []

    def __call__(self, body: bytes, header_length: int | None) -> Any:
        self.threads.append(threading.current_thread().name)
        if len(body) >= OFF_LOOP_JSON_BYTES:
            self.parsing.set()
            self.served_meanwhile.append(self.answered.wait(WAIT_S))
        return self.real(body, header_length)


def test_the_loop_answers_while_a_large_body_is_parsed(
    router: RouterThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A liveness probe sent while a ~2 MB v2 JSON body is being parsed is answered before
    that parse ends; the inference then answers correctly."""
    held = HeldParse(parse_module.parse_header)
    monkeypatch.setattr(parse_module, "parse_header", held)
    body = v2_body(150_000)
    assert len(body) >= OFF_LOOP_JSON_BYTES
    answers: list[httpx.Response] = []

    def send() -> None:
        url = router.url + "/v2/models/ident/infer"
        answers.append(httpx.post(url, content=body, timeout=30))

    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert held.parsing.wait(WAIT_S), "the parse never started"
        probe = httpx.get(router.url + "/v2/health/live", timeout=WAIT_S * 3)
        assert probe.status_code == 200
        held.answered.set()
    finally:
        held.answered.set()
        sender.join(30)
    assert held.served_meanwhile == [True]
    assert held.threads[0].startswith("redaction")
    (answer,) = answers
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["shape"] == [1, 150_000]
    assert output["data"][:3] == pytest.approx([0.0, 0.001, 0.002])


def test_a_small_body_is_parsed_on_the_loop(
    router: RouterThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the threshold the parse stays inline: no hop to a thread."""
    held = HeldParse(parse_module.parse_header)
    monkeypatch.setattr(parse_module, "parse_header", held)
    url = router.url + "/v2/models/ident/infer"
    answer = httpx.post(url, content=v2_body(10), timeout=10)
    assert answer.status_code == 200
    assert held.threads
    assert not held.threads[0].startswith("redaction")


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="counting")
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def context(api: str, body: bytes) -> RequestContext:
    return RequestContext(
        api=api,
        model="",
        version=None,
        deadline=asyncio.get_running_loop().time() + 30,
        started=time.perf_counter(),
        headers=CIMultiDict(),
        body=body,
    )


async def test_large_openai_and_v2_bodies_go_to_the_executor() -> None:
    """Both faces hand a body from OFF_LOOP_JSON_BYTES on to the executor and parse a smaller
    one themselves, with the same result either way."""
    executor = CountingExecutor()
    try:
        text = "x" * OFF_LOOP_JSON_BYTES
        big = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
        small = orjson.dumps({"model": "m", "messages": []})
        openai = ParseOpenAIRequest(executor=executor)
        for body, hops in ((small, 0), (big, 1)):
            ctx = context("openai", body)
            await openai(ctx)
            assert (ctx.model, executor.submitted) == ("m", hops)
        v2 = ParseInferRequest(executor)
        ctx = context("kserve-v2", v2_body(150_000))
        await v2(ctx)
        assert executor.submitted == 2
        assert ctx.document is not None
        assert ctx.document["inputs"][0]["shape"] == [1, 150_000]
    finally:
        executor.shutdown()
