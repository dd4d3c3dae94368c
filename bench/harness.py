"""What the benchmark scripts share: pinned servers stopped by process group, the closed-loop
load generator (wrk, else closed_loop.py), report formatting, and the run every script's main()
makes (`run_bench`). CPU accounting from /proc is procstat.py.

Every process started through here is remembered, so `stop_children_on_exit` can stop each one
by its own process-group id on any exit (error, Ctrl-C, SIGTERM); nothing is killed by name.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procstat import group_members

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PY = sys.executable
ROUTER_BIN = str(Path(PY).with_name("layer-router"))
WRK = shutil.which("wrk")
LISTENING = re.compile(r"listening on http://([^\s,/]+):(\d+)")

_children: list[subprocess.Popen[bytes]] = []  # every process we start, to stop on any exit


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ processes
class Server:
    """A server in its own session (pgid == pid), pinned with taskset, stopped by pgid.

    Ready when its log says "listening on http://HOST:PORT", or, with `port`, when that port
    on 127.0.0.1 accepts a connection (for servers that print nothing, such as nginx).
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        cpu: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.name, self.argv, self.cpu, self.log_path, self.env = name, argv, cpu, log_path, env
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = ""

    def start(self, timeout: float = 120.0) -> Server:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                ["taskset", "-c", self.cpu, *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=HERE,
                env=self.env,
            )
        _children.append(self.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.port is not None:
                if _accepts(self.port):
                    self.base = f"http://127.0.0.1:{self.port}"
            else:
                text = self.log_path.read_bytes()[offset:].decode(errors="replace")
                match = LISTENING.search(text)
                if match:
                    self.base = f"http://{match.group(1)}:{match.group(2)}"
            if self.base:
                log(f"{self.name} pid {self.proc.pid} on CPU {self.cpu}: {self.base}")
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"{self.name} did not start; log tail:\n{tail}")

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            log(f"{self.name} pid {self.proc.pid} stopped")


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def free_port() -> int:
    """A port nothing listens on now (for servers that cannot report the one they bound)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we created for it, then SIGKILL whatever is left of it."""
    pgid = proc.pid
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(5)
    if group_members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    if proc in _children:
        _children.remove(proc)


def run_child(argv: list[str], env: dict[str, str] | None, timeout: float) -> str:
    """Run to completion in its own session (stopped by pgid on timeout or error); stdout."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=HERE,
        start_new_session=True,
    )
    _children.append(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_group(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {err.decode()[-1500:]}")
    return out.decode()


@contextlib.contextmanager
def stop_children_on_exit() -> Iterator[None]:
    """SIGTERM becomes KeyboardInterrupt; on leaving, every child still running is stopped."""

    def on_term(signum: int, frame: types.FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        for proc in list(_children):
            stop_group(proc)
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------ load
def load(
    url: str,
    conc: int,
    seconds: float,
    cpu: str,
    body: Path,
    content_type: str = "application/json",
    header_length: int | None = None,
) -> dict[str, Any]:
    """One closed-loop run of `conc` connections (wrk_post.lua, or closed_loop.py without wrk):
    the summary line it prints, as a dict (requests, duration_us, p50_us, p99_us, err_*...)."""
    if WRK:
        env = dict(
            os.environ,
            WRK_BODY_FILE=str(body),
            WRK_CONTENT_TYPE=content_type,
            WRK_HEADER_LENGTH="" if header_length is None else str(header_length),
        )
        secs = max(1, round(seconds))  # wrk takes whole seconds
        argv = [WRK, "-t1", f"-c{conc}", f"-d{secs}s", "--timeout", "10s"]
        argv += ["-s", str(HERE / "wrk_post.lua"), url]
    else:
        env = None
        argv = [PY, str(HERE / "closed_loop.py"), url, "--connections", str(conc)]
        argv += ["--seconds", str(seconds), "--body", str(body), "--content-type", content_type]
        if header_length is not None:
            argv += ["--header-length", str(header_length)]
    out = run_child(["taskset", "-c", cpu, *argv], env, timeout=seconds + 60)
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"no summary line from the load generator: {out[-500:]}")
    result: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
    result["errors"] = sum(v for k, v in result.items() if k.startswith("err_"))
    result["rps"] = result["requests"] / max(1e-9, result["duration_us"] / 1e6)
    return result


# ------------------------------------------------------------------ report helpers
def median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def fmt(x: float | None, nd: int = 0) -> str:
    return "—" if x is None else f"{x:,.{nd}f}"


def brackets(values: Iterable[float], nd: int = 0) -> str:
    return "[" + ", ".join(fmt(v, nd) for v in values) + "]"


def git_state() -> str:
    """The checkout's commit, and whether router/ had uncommitted changes during the run."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "../router"],
            cwd=HERE,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' + uncommitted router/ changes' if dirty else ''}"


# ------------------------------------------------------------------ run preamble
ReportFn = Any  # (data, args) -> (markdown text, ...)


def rerender(path: Path, report: ReportFn) -> int:
    """Print the report of a saved results .json again (`--report FILE`)."""
    import argparse

    data = json.loads(path.read_text())
    saved = dict(data["args"], concurrency=tuple(data["args"]["concurrency"]))
    print(report(data, argparse.Namespace(**saved))[0])
    return 0


def prepare_run(args: Any, name: str) -> Path | None:
    """Checks and set-up every benchmark does first: the router is installed, this script
    stays off the server's core, the results folder exists; the run's file stem, or None."""
    if args.router_src is None and not Path(ROUTER_BIN).exists():
        log(f"{ROUTER_BIN} not found: install the project into this interpreter's venv")
        return None
    # Keep this script off the server's core; wrk and the helpers are pinned separately.
    os.sched_setaffinity(0, {int(args.load_cpu)})
    RESULTS.mkdir(exist_ok=True)
    if not WRK:
        log("wrk not found (apt-get install -y wrk): falling back to bench/closed_loop.py")
    return RESULTS / f"{name}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def save_run(stem: Path, data: dict[str, Any], report: ReportFn, args: Any, started: float) -> int:
    """Render the report, add it and the run's arguments to `data`, write `<stem>.json` and
    `.md`, print the report; the exit code of a completed run."""
    text, summary = report(data, args)
    data.update(
        summary=summary,
        args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        elapsed_s=round(time.monotonic() - started, 1),
    )
    Path(f"{stem}.json").write_text(json.dumps(data, indent=1, default=str))
    Path(f"{stem}.md").write_text(text)
    print(text)
    log(f"done in {data['elapsed_s']:.0f} s; wrote {stem}.json and .md (server logs beside)")
    return 0


Hook = Callable[[Any, Path, Path], Any]  # (args, temp folder, results file stem) -> ...


@dataclass(frozen=True)
class Bench:
    """A benchmark script's parts, run the same way by `run_bench`."""

    name: str  # results go to bench/results/<name>-<time>.{json,md}
    tmp_prefix: str
    report: ReportFn
    measure: Hook  # -> the run's data (cells, failures, ...), saved as JSON
    env_info: Callable[[Any, Path], dict[str, Any]]  # (args, temp folder) -> data["env"]
    # Taken after measuring (it may describe files the run wrote) instead of before.
    env_after_measure: bool = False
    # Called first; an exit code ends the run there, with no report (e.g. a profile instead).
    before: Hook | None = None


def run_bench(bench: Bench, args: Any) -> int:
    """A script's main(): re-render a saved report (--report), or check the set-up, measure in
    a temporary folder with every child stopped on any exit, and save the results."""
    if args.report is not None:
        return rerender(args.report, bench.report)
    stem = prepare_run(args, bench.name)
    if stem is None:
        return 2
    started = time.monotonic()
    with stop_children_on_exit(), tempfile.TemporaryDirectory(prefix=bench.tmp_prefix) as name:
        tmp = Path(name)
        try:
            if bench.before is not None:
                code: int | None = bench.before(args, tmp, stem)
                if code is not None:
                    return code
            env = None if bench.env_after_measure else bench.env_info(args, tmp)
            data: dict[str, Any] = bench.measure(args, tmp, stem)
            if bench.env_after_measure:
                env = bench.env_info(args, tmp)
        except KeyboardInterrupt:
            log("interrupted: servers stopped, no report")
            return 130
    data["env"] = env
    return save_run(stem, data, bench.report, args, started)
