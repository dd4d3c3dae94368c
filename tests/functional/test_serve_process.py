"""`layer-router serve` and `layer-router check` as real processes: start-up, serving, graceful
drain on SIGTERM, and the exit codes operators script against."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import pytest
import tritonclient.http.aio as triton_aio
from aiohttp.test_utils import TestServer

import router
from router.testing import Behaviour, FakeUpstream, identity_model, write_repository

# The router the tests import, so the child runs the same code even from a source checkout.
ROUTER_ROOT = Path(router.__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0
SLOW_RUN_S = 2.0
URL = re.compile(r"listening on (http://[^\s,]+)")

# A launcher that slows every session.run by argv[1] seconds, then runs the real CLI: the only
# way to hold a request in flight for a known time in a process we cannot reach into.
SLOW_LAUNCHER = """
import sys
from functools import partial
import router.server
from router.testing import slow_session_builder
router.server.build_app = partial(
    router.server.build_app, session_builder=slow_session_builder(float(sys.argv[1]))
)
from router.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROUTER_ROOT), env.get("PYTHONPATH")]))
    return env


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        env=child_env(),
        check=False,
    )


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, edge_models: Path) -> Path:
    """color_classifier v1 and a `slow` identity model (no warm-up), in a temp repository."""
    color = edge_models / "color_classifier"
    return write_repository(
        tmp_path_factory.mktemp("repo"),
        {
            "color_classifier": {1: (color / "1/model.onnx").read_bytes()},
            "slow": {1: identity_model("FP32")},
        },
        {"color_classifier": (color / "config.yaml").read_text(), "slow": {"warmup": False}},
    )


@dataclass
class Child:
    process: asyncio.subprocess.Process
    url: str
    stdout: list[str] = field(default_factory=list)

    async def read_until(self, text: str) -> str:
        """Stdout lines up to and including the first that contains `text`."""
        assert self.process.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                line = (await self.process.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"stdout ended before {text!r}: {self.stdout}")
                self.stdout.append(line)
                if text in line:
                    return line

    async def exit_code(self) -> int:
        assert self.process.stdout is not None
        async with asyncio.timeout(EXIT_TIMEOUT_S):
            rest = await self.process.stdout.read()
            code = await self.process.wait()
        self.stdout += rest.decode().splitlines(keepends=True)
        return code


@asynccontextmanager
async def spawn(*args: str | Path, stderr: Path) -> AsyncIterator[Child]:
    """A child router started with `args`; yields once it printed its URL; killed if the test
    leaves it running."""
    with stderr.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *map(str, args), stdout=asyncio.subprocess.PIPE, stderr=err, env=child_env()
        )
        try:
            child = Child(process, url="")
            line = await child.read_until("listening on")
            match = URL.search(line)
            assert match, line
            child.url = match.group(1)
            yield child
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def wait_ready(http: aiohttp.ClientSession, url: str) -> None:
    give_up = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < give_up:
        async with http.get(f"{url}/v2/health/ready") as resp:
            if resp.status == 200:
                return
        await asyncio.sleep(0.05)
    raise TimeoutError("the router never became ready")


def rgb_request(rgb: list[float]) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": rgb}]}
    )


class TestServe:
    """`layer-router serve` in a child process."""

    async def test_serves_and_stops_on_sigterm(
        self, repository: Path, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """With --port 0 it prints the real URL, serves tritonclient, and exits 0 on SIGTERM."""
        args = [sys.executable, "-m", "router", "serve", "--port", "0"]
        async with spawn(
            *args, "--model-repository", repository, stderr=tmp_path / "stderr"
        ) as child:
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", child.url)
            assert not child.url.endswith(":0")
            await child.read_until("model repository:")
            await wait_ready(http, child.url)
            async with triton_aio.InferenceServerClient(
                child.url.removeprefix("http://"), conn_timeout=EXIT_TIMEOUT_S
            ) as client:
                tensor = triton_aio.InferInput("rgb", [1, 3], "FP32")
                tensor.set_data_from_numpy(np.array([[0, 0, 1]], dtype=np.float32))
                result = await client.infer("color_classifier", [tensor])
            assert int(np.argmax(result.as_numpy("probs"))) == 5  # blue
            child.process.send_signal(signal.SIGTERM)
            assert await child.exit_code() == 0
        out = "".join(child.stdout)
        assert "color_classifier v1: CPUExecutionProvider" in out
        assert "draining" in out
        assert out.rstrip().endswith("stopped")

    async def test_port_in_use_exits_1(self, repository: Path) -> None:
        """A port that is taken is reported plainly, with exit code 1."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = await asyncio.to_thread(
                run_cli, "serve", "--port", str(port), "--model-repository", repository
            )
        assert done.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in done.stderr

    async def test_damaged_audit_log_stops_start_up(self, repository: Path, tmp_path: Path) -> None:
        """A site's audit log that holds no intact entry stops start-up naming the file, and
        no other log is begun beside it (the damage would go unnoticed)."""
        folder = tmp_path / "audit"
        folder.mkdir()
        damaged = folder / "edge-local.jsonl"
        damaged.write_bytes(bytes(range(256)) * 16)
        config = tmp_path / "site.yaml"
        config.write_text(f"audit: {{path: {folder}}}\n", encoding="utf-8")
        done = await asyncio.to_thread(
            run_cli, "serve", "--port", "0", "--config", config, "--model-repository", repository
        )
        assert done.returncode == 2, done.stderr
        assert str(damaged) in done.stderr
        assert "no intact audit entry" in done.stderr
        assert "Traceback" not in done.stderr
        assert sorted(p.name for p in folder.iterdir()) == ["edge-local.jsonl"]


@dataclass
class DrainRun:
    """What one SIGTERM-with-a-request-in-flight run observed."""

    in_flight_status: int = 0
    in_flight_body: dict[str, object] = field(default_factory=dict)
    in_flight_s: float = 0.0
    probes: list[int | str] = field(default_factory=list)  # ready statuses, or "refused"
    exit_code: int | None = None
    stdout: str = ""


async def probe_ready(url: str) -> int | str:
    """One readiness probe on a fresh connection, as a load balancer would send it."""
    timeout = aiohttp.ClientTimeout(total=5.0)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        try:
            async with session.get(f"{url}/v2/health/ready") as resp:
                return resp.status
        except aiohttp.ClientConnectionError:
            return "refused"


async def drain_scenario(
    repository: Path, config: Path, stderr: Path, hangup: bool = False
) -> DrainRun:
    """`hangup`: a SIGHUP (a reload, a closed terminal) follows the SIGTERM mid-drain."""
    run = DrainRun()
    args = [sys.executable, "-c", SLOW_LAUNCHER, str(SLOW_RUN_S), "serve", "--port", "0"]
    args += ["--config", str(config), "--model-repository", str(repository)]
    timeout = aiohttp.ClientTimeout(total=EXIT_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        spawn(*args, stderr=stderr) as child,
    ):
        await wait_ready(http, child.url)

        async def in_flight() -> None:
            started = time.monotonic()
            body = orjson.dumps(
                {
                    "inputs": [
                        {"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}
                    ]
                }
            )
            async with http.post(f"{child.url}/v2/models/slow/infer", data=body) as resp:
                run.in_flight_status = resp.status
                run.in_flight_body = await resp.json()
            run.in_flight_s = time.monotonic() - started

        async with asyncio.TaskGroup() as tasks:
            request = tasks.create_task(in_flight())
            await wait_running(http, child.url)
            child.process.send_signal(signal.SIGTERM)
            await child.read_until("draining")
            if hangup:
                child.process.send_signal(signal.SIGHUP)
            while not request.done():
                run.probes.append(await probe_ready(child.url))
                await asyncio.sleep(0.05)
        run.exit_code = await child.exit_code()
        run.stdout = "".join(child.stdout)
    return run


async def wait_running(http: aiohttp.ClientSession, url: str) -> None:
    """Until the slow model took the request off its queue (queue stats count it then)."""
    give_up = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < give_up:
        async with http.get(f"{url}/v2/models/slow/stats") as resp:
            (stats,) = (await resp.json())["model_stats"]
        if stats["inference_stats"]["queue"]["count"] >= 1:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the request never started running")


@pytest.fixture(scope="module")
def drain_run(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> DrainRun:
    """One child router that gets SIGTERM while a 2-second inference is running."""
    folder = tmp_path_factory.mktemp("drain")
    config = folder / "site.yaml"
    config.write_text("server:\n  drain_timeout_s: 20\n", encoding="utf-8")
    return asyncio.run(drain_scenario(repository, config, folder / "stderr"))


class TestDrain:
    """SIGTERM lets in-flight work finish, then the process exits 0."""

    def test_in_flight_request_finishes(self, drain_run: DrainRun) -> None:
        """The request that was running when SIGTERM arrived completes with its answer."""
        assert drain_run.in_flight_status == 200
        outputs = drain_run.in_flight_body["outputs"]
        assert isinstance(outputs, list)
        assert outputs[0]["data"] == [1.0, 2.0]
        assert drain_run.in_flight_s >= SLOW_RUN_S  # it really was held by the slow model

    def test_exits_zero_after_draining(self, drain_run: DrainRun) -> None:
        """The process says it is draining, then stopped, and exits 0."""
        assert drain_run.exit_code == 0
        assert "draining: readiness is now 503; finishing in-flight requests" in drain_run.stdout
        assert drain_run.stdout.rstrip().endswith("stopped")

    def test_never_ready_while_draining(self, drain_run: DrainRun) -> None:
        """No readiness probe after the drain began says 200."""
        assert drain_run.probes
        assert 200 not in drain_run.probes

    def test_readiness_503_while_draining(self, drain_run: DrainRun) -> None:
        """While draining, readiness answers 503 so load balancers stop sending traffic."""
        assert 503 in drain_run.probes


async def test_a_sighup_while_draining_does_not_cut_the_drain(
    repository: Path, tmp_path: Path
) -> None:
    """A SIGHUP after SIGTERM (a config reloader, logrotate, a closed terminal) found no
    handler and killed the router mid-drain; it is ignored: the request in flight gets its
    answer and the process exits 0."""
    config = tmp_path / "site.yaml"
    config.write_text("server:\n  drain_timeout_s: 20\n", encoding="utf-8")
    run = await drain_scenario(repository, config, tmp_path / "stderr", hangup=True)
    assert run.in_flight_status == 200
    assert run.exit_code == 0
    assert "SIGHUP ignored while stopping" in run.stdout


async def test_a_sighup_while_starting_does_not_end_the_router(
    repository: Path, tmp_path: Path
) -> None:
    """A SIGHUP while the models load (here a 2-second warm-up) found SIGHUP's default action
    and ended the process before it ever listened; it is ignored until reloads are handled."""
    config = tmp_path / "site.yaml"
    slow_warmup = tmp_path / "repo"
    shutil.copytree(repository, slow_warmup)
    (slow_warmup / "slow" / "config.yaml").write_text("warmup: true\n")
    config.write_text("server: {readiness_grace_s: 0}\n")
    args = [sys.executable, "-c", SLOW_LAUNCHER, str(SLOW_RUN_S), "serve", "--port", "0"]
    args += ["--config", str(config), "--model-repository", str(slow_warmup)]
    errors = tmp_path / "stderr"
    with errors.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=err, env=child_env()
        )
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:  # until the app is being built (a file to poll: no event to wait on)
                if "secret_file" in errors.read_text():
                    break
                await asyncio.sleep(0.02)
        process.send_signal(signal.SIGHUP)
        assert process.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            first = (await process.stdout.readline()).decode()
        assert "listening on" in first, errors.read_text()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_stdout_whose_reader_left_does_not_cut_the_drain(
    repository: Path, tmp_path: Path
) -> None:
    """`serve | grep -m1 listening`: the reader of stdout is gone when SIGTERM comes, so the
    'draining' line cannot be written; that ended the process at once (a BrokenPipeError
    before the drain: the request in flight cut, the stores not closed). The drain goes on
    and the process exits 0."""
    args = [sys.executable, "-c", SLOW_LAUNCHER, str(SLOW_RUN_S), "serve", "--port", "0"]
    args += ["--model-repository", str(repository)]
    with (tmp_path / "stderr").open("wb") as err:
        child = await asyncio.to_thread(
            partial(subprocess.Popen, args, stdout=subprocess.PIPE, stderr=err, env=child_env())
        )
    try:
        assert child.stdout is not None
        lines: list[str] = []
        while not any("admin (/metrics" in line for line in lines):
            line = (await asyncio.to_thread(child.stdout.readline)).decode()
            assert line, lines
            lines.append(line)
        match = URL.search("".join(lines))
        assert match, lines
        child.stdout.close()  # the reader leaves
        timeout = aiohttp.ClientTimeout(total=EXIT_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await wait_ready(http, match.group(1))
            body = orjson.dumps(
                {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}
            )
            request = asyncio.ensure_future(
                http.post(f"{match.group(1)}/v2/models/slow/infer", data=body)
            )
            await wait_running(http, match.group(1))
            child.send_signal(signal.SIGTERM)
            answer = await request
            assert answer.status == 200
            answer.release()
        code = await asyncio.to_thread(child.wait, EXIT_TIMEOUT_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert code == 0
    assert "Traceback" not in (tmp_path / "stderr").read_text()


async def test_offline_with_upstreams_says_they_are_not_used(tmp_path: Path) -> None:
    """`serve --offline --central URL`: the flags contradict each other, so start-up says that
    the upstream is not used while forced offline."""
    async with spawn(
        sys.executable,
        "-m",
        "router",
        "serve",
        "--offline",
        "--central",
        "http://127.0.0.1:9",
        "--port",
        "0",
        stderr=tmp_path / "err.log",
    ) as child:
        line = await child.read_until("offline (--offline")
        assert "1 upstream cluster(s) configured are not used" in line


async def test_offline_from_the_config_says_a_reload_ends_it(tmp_path: Path) -> None:
    """`routing.offline: true` in the file: start-up says how it ends, a reload with it false
    included (routing.* applies on reload), not only a restart."""
    config = tmp_path / "site.yaml"
    config.write_text(
        "routing: {offline: true}\n"
        "upstreams: [{name: central, tier: central, endpoints: [{url: 'http://127.0.0.1:9'}]}]\n"
    )
    command = (sys.executable, "-m", "router", "serve", "--config", str(config), "--port", "0")
    async with spawn(*command, stderr=tmp_path / "err.log") as child:
        line = await child.read_until("offline (--offline")
        assert "routing.offline: false and a reload" in line


class TestCheck:
    """`layer-router check`: 0 when everything loads, 1 for a broken model, 2 for a bad config."""

    def test_good_config(self, repository: Path, tmp_path: Path) -> None:
        """A config naming a good repository passes and lists what loaded."""
        config = tmp_path / "site.yaml"
        config.write_text(f"models:\n  repository: {repository}\n", encoding="utf-8")
        done = run_cli("check", config)
        assert done.returncode == 0, done.stderr
        assert "color_classifier v1: CPUExecutionProvider" in done.stdout
        assert "ok: site 'edge-local' (edge), 2 models" in done.stdout

    def test_model_repository_flag(self, repository: Path) -> None:
        """--model-repository alone (embedded config) is checked the same way."""
        done = run_cli("check", "--model-repository", repository)
        assert done.returncode == 0, done.stderr
        assert str(repository) in done.stdout

    def test_unknown_key_exits_2(self, tmp_path: Path) -> None:
        """An unknown key is a config error (2) naming the file and the dotted key."""
        config = tmp_path / "site.yaml"
        config.write_text("server:\n  port: 8000\n  bogus_key: 1\n", encoding="utf-8")
        done = run_cli("check", config)
        assert done.returncode == 2
        assert str(config) in done.stderr
        assert "server.bogus_key: unknown key" in done.stderr

    def test_escalation_on_a_missing_output_exits_1(self, repository: Path, tmp_path: Path) -> None:
        """An escalation judged on an output the local model does not have would never fire:
        the check fails (1), naming the dotted key and the output."""
        config = tmp_path / "site.yaml"
        config.write_text(
            f"models:\n  repository: {repository}\nrouting:\n  models:\n    color_classifier:\n"
            "      escalate: {to_model: big, threshold: 0.5, output: scores}\n",
            encoding="utf-8",
        )
        done = run_cli("check", config)
        assert done.returncode == 1, done.stdout
        assert "routing.models.color_classifier.escalate.output" in done.stderr
        assert "'scores'" in done.stderr

    def test_checks_the_config_serve_would_use(self, tmp_path: Path) -> None:
        """Without a FILE, check reads $LAYER_ROUTER_CONFIG as serve does (the container's
        way), instead of passing the embedded config while serve would refuse the real one."""
        config = tmp_path / "site.yaml"
        config.write_text("server:\n  bogus_key: 1\n", encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "router", "check"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            env={**child_env(), "LAYER_ROUTER_CONFIG": str(config)},
            check=False,
        )
        assert done.returncode == 2
        assert "server.bogus_key: unknown key" in done.stderr

    def test_a_missing_model_repository_exits_2_as_serve_does(self, tmp_path: Path) -> None:
        """A --model-repository that is not a folder is a bad config (2, naming it), the exit
        `serve` gives for the same command line, not 1 as for a model that fails to load."""
        done = run_cli("check", "--model-repository", tmp_path / "missing")
        assert done.returncode == 2, done.stderr
        assert str(tmp_path / "missing") in done.stderr
        assert "not a directory" in done.stderr

    def test_an_unusable_state_directory_names_the_variable(self, tmp_path: Path) -> None:
        """A $LAYER_ROUTER_STATE_DIR under a file stops start-up (2) with a message that
        names the variable to fix, not only an internal 'policy bundle' store path."""
        blocker = tmp_path / "file"
        blocker.write_text("")
        done = subprocess.run(
            [sys.executable, "-m", "router", "serve", "--port", "0"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            env={**child_env(), "LAYER_ROUTER_STATE_DIR": str(blocker / "state")},
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert "$LAYER_ROUTER_STATE_DIR" in done.stderr
        assert str(blocker) in done.stderr
        assert "Traceback" not in done.stderr

    def test_an_empty_model_repository_flag_is_refused(self) -> None:
        """`--model-repository "$UNSET"` is an argument error (2), for check and serve alike,
        instead of taking the current folder as the repository."""
        for command in ("check", "serve"):
            done = run_cli(command, "--model-repository", "")
            assert done.returncode == 2, done.stderr
            assert "argument --model-repository" in done.stderr

    def test_an_empty_config_flag_is_refused(self) -> None:
        """`--config "$UNSET"` (and check's `"$UNSET"`) is an argument error (2) naming the
        flag, as for --model-repository, not an invalid configuration in '.'."""
        for args in (("serve", "--config", ""), ("check", "")):
            done = run_cli(*args)
            assert done.returncode == 2, done.stderr
            assert "argument --config" in done.stderr or "argument config" in done.stderr
            assert "configuration in ." not in done.stderr

    @pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop caps"
    )
    def test_a_repository_or_model_folder_that_cannot_be_listed(
        self, tmp_path: Path, edge_models: Path
    ) -> None:
        """A model repository the user may not list is exit 2 naming it (Permission denied),
        and a model folder it may not list is that model's failure (1, the others loaded),
        where both were a PermissionError stack trace (serve's start-up too)."""
        color = edge_models / "color_classifier"
        write_repository(
            tmp_path / "repo",
            {
                "color_classifier": {1: (color / "1/model.onnx").read_bytes()},
                "locked": {1: (color / "1/model.onnx").read_bytes()},
            },
        )
        without_dac = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")

        def check(repository: Path) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "router", "check", "--model-repository"]
            return subprocess.run(
                [*without_dac, *command, str(repository)],
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT_S,
                env=child_env(),
                check=False,
            )

        (tmp_path / "repo").chmod(0o300)
        try:
            unlisted = check(tmp_path / "repo")
        finally:
            (tmp_path / "repo").chmod(0o755)
        (tmp_path / "repo" / "locked").chmod(0o300)
        try:
            one_model = check(tmp_path / "repo")
        finally:
            (tmp_path / "repo" / "locked").chmod(0o755)
        assert unlisted.returncode == 2, unlisted.stderr
        assert "model repository cannot be read: Permission denied" in unlisted.stderr
        assert one_model.returncode == 1, one_model.stderr
        assert f"{tmp_path}/repo/locked cannot be read: Permission denied" in one_model.stderr
        assert "color_classifier v1: CPUExecutionProvider" in one_model.stdout
        assert "Traceback" not in unlisted.stderr + one_model.stderr

    def test_broken_model_exits_1(self, tmp_path: Path, edge_models: Path) -> None:
        """A model file that is not ONNX fails the check (1), naming the file."""
        color = edge_models / "color_classifier"
        write_repository(
            tmp_path,
            {
                "color_classifier": {1: (color / "1/model.onnx").read_bytes()},
                "broken": {1: b"not an onnx model at all"},
            },
        )
        done = run_cli("check", "--model-repository", tmp_path)
        assert done.returncode == 1
        assert str(tmp_path / "broken" / "1" / "model.onnx") in done.stderr
        assert "color_classifier v1: CPUExecutionProvider" in done.stdout


class TestDrainCutsStreams:
    """A stream still going when the drain runs out of time ends with an error event."""

    async def test_stream_cut_by_the_drain_ends_with_an_error_event(self, tmp_path: Path) -> None:
        """A chat stream from a central upstream that would take minutes: SIGTERM with a
        one-second drain ends it with a shutting_down error event, not a silent cut, and its
        audit record says so (stream_error:shutting_down), not a complete answer."""
        endless = Behaviour(reply_text="token " * 2000, stream_chunks=2000, stream_delay_s=0.05)
        upstream = TestServer(
            FakeUpstream(name="central", behaviour=endless).app(), host="127.0.0.1"
        )
        await upstream.start_server()
        config = tmp_path / "site.yaml"
        config.write_text(
            "server:\n  drain_timeout_s: 1\n  readiness_grace_s: 0\n"
            f"audit:\n  path: {tmp_path / 'audit'}\n",
            encoding="utf-8",
        )
        central = str(upstream.make_url("")).rstrip("/")
        args = [sys.executable, "-m", "router", "serve", "--port", "0", "--config", config]
        chat = {
            "model": "gpt-test",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        timeout = aiohttp.ClientTimeout(total=EXIT_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                spawn(*args, "--central", central, stderr=tmp_path / "stderr") as child,
            ):
                await wait_ready(http, child.url)
                async with http.post(f"{child.url}/v1/chat/completions", json=chat) as resp:
                    assert resp.status == 200
                    audit_id = resp.headers["X-Audit-Id"]
                    events = [await resp.content.readline()]  # the stream is flowing
                    child.process.send_signal(signal.SIGTERM)
                    with contextlib.suppress(aiohttp.ClientPayloadError):
                        async for line in resp.content:
                            events.append(line)
                assert await child.exit_code() == 0
        finally:
            await upstream.close()
        data = [line[6:] for line in events if line.startswith(b"data: ")]
        assert len(data) > 3  # content events came before the cut
        last = orjson.loads(data[-1])
        assert last["error"]["code"] == "shutting_down", last
        assert b"[DONE]" not in b"".join(data)
        (log,) = (tmp_path / "audit").glob("*.jsonl")
        records = [orjson.loads(line) for line in log.read_bytes().splitlines()]
        (record,) = (r for r in records if r.get("id") == audit_id)
        assert record["reasons"][-1] == "stream_error:shutting_down", record

    async def test_request_cut_by_the_drain_gets_a_shutting_down_answer(
        self, tmp_path: Path
    ) -> None:
        """A non-stream request still waiting on its upstream when a one-second drain runs
        out gets 503 shutting_down, and its audit record says so, instead of a connection
        closed with no answer and a record blaming the client (499 client_gone)."""
        fake = FakeUpstream(name="central", behaviour=Behaviour(delay_s=60))
        upstream = TestServer(fake.app(), host="127.0.0.1")
        await upstream.start_server()
        config = tmp_path / "site.yaml"
        config.write_text(
            "server:\n  drain_timeout_s: 1\n  readiness_grace_s: 0\n"
            f"audit:\n  path: {tmp_path / 'audit'}\n",
            encoding="utf-8",
        )
        central = str(upstream.make_url("")).rstrip("/")
        args = [sys.executable, "-m", "router", "serve", "--port", "0", "--config", config]
        chat = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
        timeout = aiohttp.ClientTimeout(total=EXIT_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                spawn(*args, "--central", central, stderr=tmp_path / "stderr") as child,
            ):
                await wait_ready(http, child.url)
                answer = asyncio.ensure_future(
                    http.post(f"{child.url}/v1/chat/completions", json=chat)
                )
                for _ in range(int(EXIT_TIMEOUT_S / 0.05)):  # until it waits on the upstream
                    if fake.requests_to("/v1/chat/completions"):
                        break
                    await asyncio.sleep(0.05)
                child.process.send_signal(signal.SIGTERM)
                async with await answer as resp:
                    status, body = resp.status, await resp.json()
                    audit_id = resp.headers["X-Audit-Id"]
                assert await child.exit_code() == 0
        finally:
            await upstream.close()
        assert (status, body["error"]["code"]) == (503, "shutting_down"), body
        (log,) = (tmp_path / "audit").glob("*.jsonl")
        records = [orjson.loads(line) for line in log.read_bytes().splitlines()]
        (record,) = (r for r in records if r.get("id") == audit_id)
        assert record["status"] == 503
