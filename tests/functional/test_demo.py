"""`layer-router demo` as a real process: three tiers answer through the edge, a cut link falls
back or goes offline, and Ctrl-C (SIGINT) stops every child process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import router

ROUTER_ROOT = Path(router.__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 20.0


@dataclass
class Demo:
    process: subprocess.Popen[str]
    topology: dict[str, Any]
    output: list[str] = field(default_factory=list)

    def children(self) -> list[int]:
        """Pids of the demo's direct children (the three tiers), from /proc."""
        pid = self.process.pid
        path = Path(f"/proc/{pid}/task/{pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []


def start_demo(workdir: Path) -> Demo:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROUTER_ROOT), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "router", "demo", "--base-port", "0", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    demo = Demo(process, {})
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            demo.output.append(line)
            if line.startswith("DEMO_TOPOLOGY "):
                demo.topology = json.loads(line.split(" ", 1)[1])
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(START_TIMEOUT_S):
        process.kill()
        pytest.fail("demo did not become ready:\n" + "".join(demo.output[-20:]))
    return demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    demo = start_demo(tmp_path_factory.mktemp("demo"))
    yield demo
    if demo.process.poll() is None:
        demo.process.kill()
        demo.process.wait(STOP_TIMEOUT_S)


def call(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(url, data=data if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if body is None and url.split("/")[-2] in ("cut", "restore"):
        request.method = "POST"
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def rgb(*values: float) -> dict[str, Any]:
    return {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": list(values)}]}


def chat(text: str) -> dict[str, Any]:
    return {"model": "mock-llm", "messages": [{"role": "user", "content": text}]}


def eventually(check: Any, timeout_s: float = 15.0) -> Any:
    """Health checks take a moment to notice a cut: ask until `check` returns a result."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def test_confident_colour_answered_at_edge(demo: Demo) -> None:
    """White is confident on the edge model: answered locally, the headers name the edge."""
    status, headers, doc = call(
        demo.topology["edge"] + "/v2/models/color_classifier/infer", rgb(1, 1, 1)
    )
    assert status == 200
    assert (headers["X-Served-By-Tier"], headers["X-Route-Reason"]) == ("edge", "local")
    assert doc["model_name"] == "color_classifier"


def test_low_confidence_escalates_to_central(demo: Demo) -> None:
    """Red scores below the threshold at the edge: central's large model answers."""
    status, headers, doc = call(
        demo.topology["edge"] + "/v2/models/color_classifier/infer", rgb(1, 0, 0)
    )
    assert status == 200
    assert headers["X-Served-By-Tier"] == "central"
    assert "escalated_low_confidence" in headers["X-Route-Reason"]
    assert doc["model_name"] == "color_classifier_large"


def test_escalation_corrects_the_small_model(demo: Demo) -> None:
    """Dark green reads as black on the small edge model; central's large model says green."""
    status, headers, doc = call(
        demo.topology["edge"] + "/v2/models/color_classifier/infer",
        dict(rgb(0, 0.4, 0), outputs=[{"name": "probs", "parameters": {"classification": 1}}]),
    )
    assert status == 200
    assert headers["X-Served-By-Tier"] == "central"
    assert doc["model_name"] == "color_classifier_large"
    score, _, label = doc["outputs"][0]["data"][0].split(":")
    assert (label, float(score) > 0.9) == ("green", True)


def test_regional_model_forwarded(demo: Demo) -> None:
    """A model only the regional tier holds is answered there, through the edge."""
    frame = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32"}]}
    frame["inputs"][0]["data"] = [20.0] * 63 + [90.0]
    status, headers, _ = call(demo.topology["edge"] + "/v2/models/hotspot_detector/infer", frame)
    assert status == 200
    assert headers["X-Served-By-Tier"] == "regional"


def test_chat_reaches_mock_llm_redacted(demo: Demo) -> None:
    """Chat goes edge -> regional -> central's mock LLM, which never sees the email."""
    status, headers, doc = call(
        demo.topology["edge"] + "/v1/chat/completions", chat("write to jane.doe@example.com")
    )
    assert status == 200
    assert headers["X-Served-By-Tier"] == "central"
    assert headers["X-Route-Reason"].startswith("forward:regional>forward:central")
    heard = doc["choices"][0]["message"]["content"]
    assert "mock" in heard
    assert "jane.doe@example.com" not in heard


def test_cut_regional_falls_back_to_central(demo: Demo) -> None:
    """With the regional link cut, chat goes from the edge straight to central."""
    control = demo.topology["control"]
    assert call(control + "/cut/regional")[2]["cut"] == ["regional"]
    try:

        def direct() -> dict[str, str] | None:
            status, headers, _ = call(demo.topology["edge"] + "/v1/chat/completions", chat("hi"))
            reason = headers.get("X-Route-Reason", "")
            return headers if status == 200 and "forward:regional" not in reason else None

        headers = eventually(direct)
        assert headers is not None
        assert headers["X-Served-By-Tier"] == "central"
    finally:
        call(control + "/restore/regional")


def test_cut_all_goes_offline_and_back(demo: Demo) -> None:
    """Every link cut: chat gets 503 offline, local models still answer; restored, chat works."""
    control, edge = demo.topology["control"], demo.topology["edge"]
    call(control + "/cut/all")
    try:

        def offline() -> dict[str, Any] | None:
            # Until the probes have declared the tiers offline, a failed try answers
            # no_healthy_target; then every request gets the fast `offline` answer.
            status, _, doc = call(edge + "/v1/chat/completions", chat("hello"))
            return doc if status == 503 and doc["error"]["code"] == "offline" else None

        doc = eventually(offline)
        assert doc is not None
        status, headers, _ = call(edge + "/v2/models/color_classifier/infer", rgb(0, 0, 1))
        assert (status, headers["X-Served-By-Tier"]) == (200, "edge")
    finally:
        call(control + "/restore/all")
    back = eventually(lambda: call(edge + "/v1/chat/completions", chat("back"))[0] == 200 or None)
    assert back is True


def test_sigint_stops_every_tier(demo: Demo) -> None:
    """Ctrl-C ends the demo with exit code 0 and no tier process left behind."""
    children = demo.children()
    assert len(children) == 3
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(STOP_TIMEOUT_S) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists()
    assert any("every tier terminated" in line for line in demo.output)


@pytest.mark.parametrize("base_port", ["-1", "65500", "99999"])
def test_a_base_port_out_of_range_is_refused_before_anything_starts(base_port: str) -> None:
    """A --base-port whose tiers (+10, +20, +22, +30, +90) would fall outside 1..65535 is an
    argument error (exit 2) naming the flag, not three tiers started and then a vague exit."""
    from test_serve_process import run_cli

    result = run_cli("demo", "--base-port", base_port)
    assert result.returncode == 2
    assert "--base-port" in result.stderr
    assert "tier exited" not in result.stderr


def test_a_workdir_that_cannot_be_made_is_a_one_line_error(tmp_path: Path) -> None:
    """--workdir under a file (or anywhere unwritable) is a one-line error naming it, not a
    traceback."""
    from test_serve_process import run_cli

    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli("demo", "--base-port", "0", "--workdir", blocker / "demo")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(blocker / "demo") in result.stderr


def test_an_empty_workdir_is_refused(tmp_path: Path) -> None:
    """`--workdir "$UNSET"` is an argument error (2), not the current folder filled with
    the demo's configs, models and logs."""
    from test_serve_process import run_cli

    result = run_cli("demo", "--base-port", "0", "--workdir", "")
    assert result.returncode == 2
    assert "argument --workdir" in result.stderr
