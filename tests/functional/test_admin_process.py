"""`layer-router serve` starts the admin listener next to the API one (issue 6 item 1)."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
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


API = re.compile(r"listening on (http://[^\s,]+)")
FILE_SIZE_LIMIT = 16 * 1024  # bytes: a few dozen audit records, then every write fails


def test_lost_audit_records_show_in_status_and_metrics(edge_models: Path, tmp_path: Path) -> None:
    """When audit writes fail (here a file size limit), answers go on and the records lost are
    counted in /status and /metrics, not only in an error line."""
    config = tmp_path / "site.yaml"
    config.write_text(f"audit: {{path: {tmp_path / 'audit'}}}\n", encoding="utf-8")
    command = [sys.executable, "-m", "router", "serve", "--port", "0", "--config", str(config)]
    command += ["--model-repository", str(edge_models)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env() | {"PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        # Set long before the router opens its log (after imports and model loading). Python
        # ignores SIGXFSZ: a write past the limit fails with EFBIG, as on a full disk.
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
        assert process.stdout is not None
        urls: dict[str, str] = {}
        for line in process.stdout:
            for name, pattern in (("api", API), ("admin", ADMIN)):
                if match := pattern.search(line):
                    urls[name] = match.group(1)
            if len(urls) == 2:
                break
        body = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, 0]}]}
        with httpx.Client(timeout=LIMIT_S) as client:
            infer = urls["api"] + "/v2/models/color_classifier/infer"
            answers = [client.post(infer, json=body).status_code for _ in range(60)]
            assert answers == [200] * 60
            failures = 0
            for _ in range(100):  # records are written after their answers: wait for them
                status = client.get(urls["admin"] + "/status").json()["audit"]
                failures = status["write_failures"]
                if failures:
                    break
                time.sleep(0.05)
            metrics = client.get(urls["admin"] + "/metrics").text
        assert status["enabled"] is True
        assert 0 < failures < 60
        counted = re.search(r"^layer_router_audit_write_failures_total (\S+)$", metrics, re.M)
        assert counted is not None
        assert float(counted.group(1)) >= failures
    finally:
        process.kill()
        process.communicate(timeout=LIMIT_S)
