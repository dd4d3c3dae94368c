"""`layer-router serve` starts the admin listener next to the API one (issue 6 item 1)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
ADMIN = re.compile(r"admin \(/metrics, /status\) on (http://[^\s,]+)")
LIMIT_S = 30.0


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH")]))
    return out


@contextmanager
def serving(*args: str) -> Iterator[subprocess.Popen[str]]:
    command = [sys.executable, "-m", "router", "serve", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env()
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=LIMIT_S)


def test_serve_prints_and_serves_the_admin_url(edge_models: Path) -> None:
    """With --port 0 the admin listener takes a free port too, says where, and serves
    /metrics there; SIGTERM stops both listeners."""
    with serving("--port", "0", "--model-repository", str(edge_models)) as process:
        assert process.stdout is not None
        admin = ""
        for line in process.stdout:
            match = ADMIN.search(line)
            if match:
                admin = match.group(1)
                break
        assert admin, "no admin line"
        assert not admin.endswith(":8002")
        metrics = httpx.get(admin + "/metrics", timeout=LIMIT_S)
        assert metrics.status_code == 200
        assert "layer_router_build_info" in metrics.text
        process.send_signal(signal.SIGTERM)
        assert process.wait(LIMIT_S) == 0


def test_admin_port_in_use_exits_1(edge_models: Path) -> None:
    """An admin port that is taken is reported plainly, with exit code 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--port", "0", "--admin-port", str(port), "--model-repository", str(edge_models)]
        with serving(*args) as process:
            _, err = process.communicate(timeout=LIMIT_S)
            assert process.returncode == 1
            assert f"cannot listen on 127.0.0.1:{port} (admin)" in err
