"""What bench/forwarding.py measures: the mock upstream, nginx, the naive proxy and the router,
each started pinned to its core, and the check each passes before it is measured.
"""

from __future__ import annotations

import argparse
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness import ROUTER_BIN
from mock_openai import COMPLETION
from processes import HERE, PY, Server, free_port

NGINX = next((p for p in ("/usr/sbin/nginx", "/usr/bin/nginx") if Path(p).exists()), None)
TARGETS = ("direct", "nginx", "naive", "router")

CHAT = {
    "model": "mock",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello! In one sentence, what is an inference router?"},
    ],
    "max_tokens": 32,
    "temperature": 0,
}


def nginx_conf(prefix: Path, port: int, upstream_port: int) -> str:
    """A plain reverse proxy: one worker, keep-alive to the client and to the upstream."""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp}
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream mock {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 75s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def router_argv(
    args: argparse.Namespace, upstream: str, state: Path
) -> tuple[list[str], dict[str, str]]:
    """The router with default settings; what it keeps across restarts (audit trail, spool)
    goes to the run's temp folder, not to the user's state directory."""
    serve = ["serve", "--port", "0", "--central", upstream]
    env = dict(os.environ, LAYER_ROUTER_STATE_DIR=str(state))
    if args.router_src is None:
        return [ROUTER_BIN, *serve], env
    # Another checkout of the router (e.g. a snapshot of HEAD) instead of the installed one.
    return [PY, "-m", "router", *serve], dict(env, PYTHONPATH=str(args.router_src))


def make_server(
    name: str, mock: Server, tmp: Path, stem: Path, rep: int, args: argparse.Namespace
) -> Server:
    log_path = Path(f"{stem}.{name}.rep{rep}.log")
    if name == "nginx":
        if NGINX is None:
            raise RuntimeError("nginx not found: apt-get install -y nginx-light")
        prefix = tmp / f"nginx-{rep}"
        prefix.mkdir(exist_ok=True)
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, port, int(mock.base.rsplit(":", 1)[1])))
        argv = [NGINX, "-p", str(prefix), "-c", str(conf), "-e", "stderr"]
        return Server(name, argv, args.sut_cpu, log_path, port=port)
    if name == "naive":
        argv = [PY, str(HERE / "naive_proxy.py"), "--port", "0", "--upstream", mock.base]
        return Server(name, argv, args.sut_cpu, log_path)
    if name == "router":
        argv, env = router_argv(args, mock.base, tmp / f"router-state-{rep}")
        return Server(name, argv, args.sut_cpu, log_path, env)
    raise ValueError(name)


def start_mock(stem: Path, args: argparse.Namespace) -> Server:
    argv = [PY, str(HERE / "mock_openai.py"), "--port", "0"]
    argv += ["--chunks", str(args.sse_chunks), "--delay-ms", str(args.sse_delay_ms)]
    return Server("mock", argv, args.load_cpu, Path(f"{stem}.mock.log")).start()


def check(base: str, args: argparse.Namespace, bodies: dict[str, Path]) -> dict[str, Any]:
    """Before measuring: the JSON answer is the mock's, byte for byte; a stream arrives whole.
    Returns the headers a client sees (the router's say which tier answered and why)."""
    request = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=bodies["json"].read_bytes(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    deadline = time.monotonic() + 20
    while True:  # the router may still be discovering the mock's models
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body, headers = response.read(), dict(response.headers)
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{base}: no answer: {exc}") from None
            time.sleep(0.2)
    if body != COMPLETION:
        raise RuntimeError(f"{base}: the answer differs from the mock's: {body[:200]!r}")
    request = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=bodies["stream"].read_bytes(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        stream = response.read()
    events = stream.count(b"\n\n")
    if events != args.sse_chunks + 3 or not stream.endswith(b"data: [DONE]\n\n"):
        raise RuntimeError(f"{base}: incomplete stream ({events} events): {stream[-200:]!r}")
    keep = ("x-route-reason", "x-served-by-tier", "server-timing", "x-policy-revision", "x-cache")
    return {k: v for k, v in headers.items() if k.lower() in keep}
