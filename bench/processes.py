"""The benchmark scripts' processes: servers pinned with taskset in their own sessions, and
one-shot children, each stopped by its own process-group id, never by name.

Every process started through here is remembered, so `stop_children_on_exit` can stop each one
on any exit (error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

from procstat import group_members

HERE = Path(__file__).resolve().parent
PY = sys.executable
LISTENING = re.compile(r"listening on http://([^\s,/]+):(\d+)")

_children: list[subprocess.Popen[bytes]] = []  # every process we start, to stop on any exit


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


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
