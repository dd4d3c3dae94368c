"""A demo topology (`layer-router demo`) as a child process the load test starts and stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def child_env() -> dict[str, str]:
    """This checkout first on the path, so children run the same code as the runner."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class DemoTopology:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "demo.log"
        self.process: subprocess.Popen[str] | None = None
        self.topology: dict[str, Any] = {}

    def __enter__(self) -> DemoTopology:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = ["-m", "router", "demo", "--base-port", "0", "--workdir", str(self.workdir)]
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(),
        )
        ready = threading.Event()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        if not ready.wait(START_TIMEOUT_S) or not self.topology:
            self.__exit__()
            raise RuntimeError(f"the demo topology did not start; see {self.log_path}")
        return self

    def _read(self, ready: threading.Event) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        with self.log_path.open("w") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                if line.startswith("DEMO_TOPOLOGY "):
                    self.topology = json.loads(line.split(" ", 1)[1])
                    ready.set()
        ready.set()  # the demo ended: whoever waits must not wait for nothing

    def __exit__(self, *exc: object) -> None:
        """Ctrl-C, as a user would stop it; SIGKILL if it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
