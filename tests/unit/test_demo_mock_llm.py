"""The demo's mock LLM answers each OpenAI endpoint in the shape the openai SDK parses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from openai import OpenAI

from router.demo.mock_llm import mock_llm_app
from router.testing import AppThread


@pytest.fixture(scope="module")
def llm() -> Iterator[OpenAI]:
    with AppThread(lambda: mock_llm_app("mock-llm")) as server:
        yield OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=10)


def test_completions_carry_their_text(llm: OpenAI) -> None:
    """A legacy text completion comes back in `choices[0].text`, the prompt echoed."""
    answer = llm.completions.create(model="mock-llm", prompt="once upon a time")
    assert answer.object == "text_completion"
    assert answer.choices[0].text.endswith("heard: once upon a time")


def test_streamed_completions_carry_their_text(llm: OpenAI) -> None:
    """A streamed text completion's chunks join to the echoed prompt and end with a stop."""
    chunks = list(llm.completions.create(model="mock-llm", prompt="once upon", stream=True))
    assert "".join(c.choices[0].text for c in chunks).endswith("heard: once upon")
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_keeps_its_shape(llm: OpenAI) -> None:
    """Chat answers are still chat completions, streamed or not."""
    hi = [{"role": "user", "content": "hi"}]
    answer = llm.chat.completions.create(model="mock-llm", messages=hi)
    assert answer.choices[0].message.content is not None
    assert answer.choices[0].message.content.endswith("heard: hi")
    chunks = llm.chat.completions.create(model="mock-llm", messages=hi, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).endswith("heard: hi")


def test_running_the_mock_as_a_module_warns_of_nothing() -> None:
    """`python -m router.demo.mock_llm` (the compose example's LLM) starts without runpy's
    warning that the module was imported before it ran."""
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "router.demo.mock_llm", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "RuntimeWarning" not in done.stderr
