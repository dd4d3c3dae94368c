"""Several worker processes serving one port, so a site uses all its cores.

`layer-router serve --workers N` (or `server.workers: N`) makes the process a supervisor: it
starts N copies of the same `serve` command, each marked with its index in the environment
(`LAYER_ROUTER_WORKER`, and the port in `LAYER_ROUTER_WORKER_PORT`); worker i's admin listener
is on the admin port + i (any free port when that is 0). Each worker listens on the same
host:port with `SO_REUSEPORT` and the kernel spreads new connections between them (uvicorn's
and gunicorn's `--workers`, without a shared accept socket). The supervisor itself serves nothing:

- it reserves the port first (binding it with SO_REUSEPORT, never listening), so `--port 0`
  gets one port for every worker and a port held by another program fails at once;
- SIGTERM / SIGINT: forwarded; the workers drain as a single process does; the supervisor
  exits 0 when they all did, killing any still running after their drain deadline;
- SIGHUP: forwarded, for each worker to reload;
- a worker that exits by itself is restarted, after a back-off that doubles per quick crash
  (1 s up to 30 s; a worker that ran a minute starts again from 1 s); a worker that fails
  within its first seconds of the very first start, or with exit 2 (a configuration serve
  refuses) on it, stops the site.

What each worker holds is in the README ("Worker processes").
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

from router.settings import Settings

WORKER_ENV = "LAYER_ROUTER_WORKER"
PORT_ENV = "LAYER_ROUTER_WORKER_PORT"  # the port the supervisor reserved for all workers
SUPERVISOR_ENV = "LAYER_ROUTER_SUPERVISOR_PID"  # a worker whose parent is another has lost it
FIRST_START_GRACE_S = 5.0  # a worker failing this soon after the first start fails the site
CONFIG_EXIT = 2  # serve refused its settings
STABLE_RUN_S = 60.0  # a run this long resets the back-off
BACKOFF_S = (1.0, 30.0)
POLL_S = 0.1


def worker_index() -> int | None:
    """This process's worker index under a supervisor; None when it runs alone."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


def supervisor_pid() -> int | None:
    """The pid of this worker's supervisor; None when it runs alone."""
    value = os.environ.get(SUPERVISOR_ENV)
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


def is_primary() -> bool:
    """The process that does a site's once-per-site work (draining the spool): worker 0, or
    the only process."""
    return worker_index() in (None, 0)


def admin_port(base: int) -> int:
    """The admin listener's port in this process: base + worker index, so each worker's
    metrics are scraped as a target of their own (0 stays 0: any free port)."""
    return base + (worker_index() or 0) if base else 0


def admin_ports_problem(settings: Settings) -> str | None:
    """Why the workers' admin ports (admin.port + index) cannot all be had: past 65535, or
    one of them the API's port, which only the last workers would find out as they start."""
    admin, server = settings.admin, settings.server
    if server.workers == 1 or not admin.enabled or admin.port == 0:
        return None
    last = admin.port + server.workers - 1
    if last > 65535:
        return f"the {server.workers} workers' admin ports {admin.port}..{last} go past 65535"
    wildcard = {"", "0.0.0.0", "::"}
    overlap = server.host == admin.host or {server.host, admin.host} & wildcard
    if overlap and admin.port <= server.port <= last:
        return (
            f"the {server.workers} workers' admin ports {admin.port}..{last} take server.port "
            f"{server.port}: move admin.port (--admin-port)"
        )
    return None


def as_worker(doc: dict[str, Any]) -> None:
    """Settings (as a dict, before validation) as this worker runs them: on the supervisor's
    reserved port, and with an admin listener of its own (when the settings have one)."""
    reserved = os.environ.get(PORT_ENV)
    if reserved is not None and reserved.isascii() and reserved.isdigit():
        doc["server"]["port"] = int(reserved)
    admin = doc.get("admin")
    if isinstance(admin, dict) and isinstance(admin.get("port"), int):
        admin["port"] = admin_port(admin["port"])


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind host:port with SO_REUSEPORT without listening: the port is then ours (any port 0
    picked), and workers binding it with SO_REUSEPORT share it. Raises OSError."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # SO_REUSEADDR as asyncio's servers set it: without it, the connections a stopped site
        # left in TIME_WAIT refuse the port for a minute (a listening program still does).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    starts: int = 0
    quick_crashes: int = 0
    restart_at: float = 0.0
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        command: Sequence[str],
        count: int,
        settings: Settings,
        out: TextIO,
        env: dict[str, str] | None = None,
    ) -> None:
        self._command = list(command)
        self._env = dict(os.environ if env is None else env)
        self._settings = settings
        self._out = out
        self.slots = [Slot(i) for i in range(count)]
        self._stop_signal: int | None = None
        self._hangup = False

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            for slot in self.slots:
                self._start(slot)
            failure = self._watch()
            return self._stop(failure)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._hangup = True
        else:
            self._stop_signal = signum

    def _say(self, text: str) -> None:
        # One write: the workers print to the same stdout (print() would write the newline
        # separately, and an unbuffered stdout lets another process's line in between).
        try:
            self._out.write(f"supervisor: {text}\n")
            self._out.flush()
        except (OSError, ValueError):
            # Its reader gone: stopping the workers (and waiting for them) matters more than
            # the line; the workers' own lines go nowhere then too (router.server._say).
            pass

    def _start(self, slot: Slot) -> None:
        env = dict(self._env, **{WORKER_ENV: str(slot.index), SUPERVISOR_ENV: str(os.getpid())})
        slot.process = subprocess.Popen(self._command, env=env)
        slot.started = time.monotonic()
        slot.starts += 1
        self._say(f"worker {slot.index} started (pid {slot.process.pid})")

    def _watch(self) -> int | None:
        """Until a stop signal (None) or a worker failing its first start (its exit code)."""
        while self._stop_signal is None:
            if self._hangup:
                self._hangup = False
                self._signal_all(signal.SIGHUP)
            now = time.monotonic()
            for slot in self.slots:
                failure = self._tend(slot, now)
                if failure is not None:
                    return failure
            time.sleep(POLL_S)
        return None

    def _tend(self, slot: Slot, now: float) -> int | None:
        process = slot.process
        if process is None:
            if now >= slot.restart_at:
                self._start(slot)
            return None
        code = process.poll()
        if code is None:
            return None
        slot.process = None
        slot.exit_codes.append(code)
        ran = now - slot.started
        # Exit 2 is serve's "the configuration cannot be served": restarting cannot mend it,
        # however long loading the models took before it was found.
        if slot.starts == 1 and code > 0 and (code == CONFIG_EXIT or ran < FIRST_START_GRACE_S):
            self._say(f"worker {slot.index} failed to start (exit {code}); stopping")
            return code
        slot.quick_crashes = 0 if ran >= STABLE_RUN_S else slot.quick_crashes + 1
        base, cap = BACKOFF_S
        delay = min(cap, base * 2 ** max(0, slot.quick_crashes - 1))
        slot.restart_at = now + delay
        self._say(f"worker {slot.index} exited ({_describe(code)}); restarting in {delay:.0f} s")
        return None

    def _signal_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signum)

    def _stop(self, failure: int | None) -> int:
        """Drain every worker; the exit code: the failure's, else 0 when all drained cleanly."""
        self._signal_all(signal.SIGTERM)
        self._say("stopping: workers are draining")
        server = self._settings.server
        deadline = time.monotonic() + server.readiness_grace_s + server.drain_timeout_s + 10.0
        clean = True
        for slot in self.slots:
            process = slot.process
            if process is None:
                continue
            try:
                code = process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            clean = clean and code == 0
        self._say("stopped")
        if failure is not None:
            return failure
        return 0 if clean else 1


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def supervise(settings: Settings, argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    """Run `settings.server.workers` workers, each `layer-router <argv>` on the port reserved
    here."""
    server = settings.server
    problem = admin_ports_problem(settings)
    if problem is not None:  # refused before any worker loads its models
        print(f"error: invalid configuration in server.workers:\n  - {problem}", file=sys.stderr)
        return 2
    try:
        reserved = reserve_port(server.host, server.port)
    except OSError as exc:
        print(
            f"error: cannot listen on {server.host}:{server.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    with reserved:
        port = reserved.getsockname()[1]
        # The same serve command; the port comes by the environment, so the command line
        # keeps meaning what it said (--port 0 also asks for any free admin port).
        command = [sys.executable, "-m", "router", *argv]
        env = dict(os.environ, **{PORT_ENV: str(port)})
        print(
            f"supervisor: {server.workers} workers on {server.host}:{port} (pid {os.getpid()})",
            file=out,
            flush=True,
        )
        return Supervisor(command, server.workers, settings, out, env).run()
