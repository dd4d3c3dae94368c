"""Forwarding overhead: the router's upstream hop vs direct, nginx and a naive aiohttp proxy.

usage: /work/venv/bin/python bench/forwarding.py [--duration 5] [--repeats 3]
           [--concurrency 1,16,64] [--router-rev REV | --router-src DIR] [--report FILE.json]
       /work/venv/bin/python bench/forwarding.py --profile [--profile-target naive]

One mock OpenAI upstream (bench/mock_openai.py) runs on the load core for the whole run, beside
wrk; the proxy under test runs alone on the SUT core:
  direct  wrk -> mock (no hop: the baseline latencies are subtracted from)
  nginx   nginx reverse proxy, 1 worker, upstream keep-alive (the C floor for one hop)
  naive   bench/naive_proxy.py: aiohttp + uvloop pass-through, one pooled ClientSession
  router  `layer-router serve --central MOCK`: default settings, the full OpenAI pipeline as
          shipped (parse, classify with the default policy bundle, cache, route, dispatch, audit)
Per repeat (target order alternates between repeats), each proxy is started pinned to the SUT
core, checked (byte-identical JSON answer, complete SSE stream), warmed up, then measured with
a closed-loop wrk cell per concurrency: req/s, p50/p99, the proxy's CPU µs per request from
/proc. A cell with more than --max-other % of the SUT core busy with other work is measured
again (--reruns). Then time to first SSE event over --ttft-requests sequential streams
(bench/sse_client.py, on the load core). Medians over repeats; ratios and differences are
taken per repeat (targets measured side by side), then their median is printed.
Every process is started in its own session and stopped by its process-group id, also on
Ctrl-C / SIGTERM / error. Results: bench/results/forwarding-<time>.{json,md} + server logs.

--profile: no table; the router (or the naive proxy) alone under c=16 load while py-spy samples
it; writes the raw stacks and prints where the time goes (router areas, modules and functions,
aiohttp server vs client side).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness import (
    CLK,
    PY,
    ROUTER_BIN,
    WRK,
    Server,
    Usage,
    brackets,
    cpu_figures,
    cpu_model,
    fmt,
    free_port,
    git_state,
    load,
    log,
    median,
    prepare_run,
    rerender,
    run_child,
    save_run,
    stop_children_on_exit,
)
from mock_openai import COMPLETION

HERE = Path(__file__).resolve().parent
NGINX = next((p for p in ("/usr/sbin/nginx", "/usr/bin/nginx") if Path(p).exists()), None)
PY_SPY = str(Path(PY).with_name("py-spy"))
TARGETS = ("direct", "nginx", "naive", "router")
CPU_TARGET = 1.5  # router CPU per request <= 1.5 x the naive proxy's (issue 3); aim: parity
ADDED_P50_TARGET_US = 500.0  # router p50 minus direct p50 at c=1
TTFT_TARGET_US = 1000.0  # router time to first SSE event minus direct's, p50

CHAT = {
    "model": "mock",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello! In one sentence, what is an inference router?"},
    ],
    "max_tokens": 32,
    "temperature": 0,
}


# ------------------------------------------------------------------ servers
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


# ------------------------------------------------------------------ checks
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


# ------------------------------------------------------------------ measurement
def mock_served(base: str) -> int:
    with urllib.request.urlopen(f"{base}/stats", timeout=10) as response:
        count: int = json.loads(response.read())["chat"]
        return count


def cell(
    name: str, url: str, conc: int, sut: int, mock: Server, body: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One wrk run, measured again while the SUT core was busy with other work."""
    best: dict[str, Any] | None = None
    mock_base, mock_pgid = mock.base, mock.pgid
    for attempt in range(1 + args.reruns):
        groups = {sut, mock_pgid}
        served = mock_served(mock_base)
        before = Usage.now(groups)
        r = load(url, conc, args.duration, args.load_cpu, body)
        after = Usage.now(groups)
        # Upstream calls per completed request: 1 unless answers were cached, coalesced or
        # retried (wrk's last in-flight requests make it a little over 1).
        r["upstream_per_req"] = (mock_served(mock_base) - served) / max(1, r["requests"])
        r.update(cpu_figures(before, after, sut, r["requests"], args.sut_cpu, [args.load_cpu]))
        r["upstream_cpu_us_per_req"] = (
            (after.groups[mock_pgid] - before.groups[mock_pgid]) / CLK * 1e6
        ) / max(1, r["requests"])
        r["attempts"] = attempt + 1
        if name == "direct":
            # Nothing of ours runs on the SUT core, so its load cannot disturb this cell.
            r.update(other_on_sut_pct=None, noisy=False)
            return r
        if best is None or r["other_on_sut_pct"] < best["other_on_sut_pct"]:
            best = r
        if r["other_on_sut_pct"] <= args.max_other:
            break
        if attempt < args.reruns:
            log(
                f"  {name} c={conc}: {r['other_on_sut_pct']:.0f}% other load on the SUT core: again"
            )
    assert best is not None
    best["noisy"] = best["other_on_sut_pct"] > args.max_other
    return best


def ttft(
    url: str, sut: int, body: Path, args: argparse.Namespace, sut_idle: bool
) -> dict[str, Any]:
    """Time to first SSE event (bench/sse_client.py), measured again when the SUT core was
    busy with other work; `sut_idle`: nothing of ours runs there (direct)."""
    best: dict[str, Any] | None = None
    argv = ["taskset", "-c", args.load_cpu, PY, str(HERE / "sse_client.py"), url]
    argv += ["--body", str(body), "--requests", str(args.ttft_requests)]
    for attempt in range(1 + args.reruns):
        before = Usage.now({sut})
        out = run_child(argv, None, timeout=300)
        after = Usage.now({sut})
        line = next((ln for ln in out.splitlines() if ln.startswith("SSEJSON ")), None)
        if line is None:
            raise RuntimeError(f"no summary line from sse_client.py: {out[-500:]}")
        r: dict[str, Any] = json.loads(line[len("SSEJSON ") :])
        busy = cpu_figures(before, after, sut, 1, args.sut_cpu, [args.load_cpu])
        r["other_on_sut_pct"] = None if sut_idle else busy["other_on_sut_pct"]
        r["attempts"] = attempt + 1
        if sut_idle:
            return r
        if best is None or r["other_on_sut_pct"] < best["other_on_sut_pct"]:
            best = r
        if r["other_on_sut_pct"] <= args.max_other:
            break
    assert best is not None
    return best


def measure_target(
    name: str,
    rep: int,
    mock: Server,
    tmp: Path,
    stem: Path,
    bodies: dict[str, Path],
    args: argparse.Namespace,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]]:
    server = None if name == "direct" else make_server(name, mock, tmp, stem, rep, args).start()
    try:
        base = mock.base if server is None else server.base
        sut = mock.pgid if server is None else server.pgid
        headers = check(base, args, bodies)
        url = f"{base}/v1/chat/completions"
        load(url, max(args.concurrency), args.warmup, args.load_cpu, bodies["json"])
        cells = []
        for conc in args.concurrency:
            r = cell(name, url, conc, sut, mock, bodies["json"], args)
            r.update(rep=rep, target=name, conc=conc)
            cells.append(r)
            log(
                f"rep {rep} {name:6s} c={conc:<3d} {r['rps']:8,.0f} req/s  "
                f"p50 {r['p50_us'] / 1e3:6.3f} ms  p99 {r['p99_us'] / 1e3:6.3f} ms  "
                f"cpu {r['cpu_us_per_req']:7.1f} µs/req ({r['cpu_pct']:.0f}%)  "
                f"other {fmt(r['other_on_sut_pct'])}%  err {r['errors']}"
            )
        stream = None
        if name in args.ttft_targets:
            stream = ttft(url, sut, bodies["stream"], args, server is None)
            stream.update(rep=rep, target=name)
            log(
                f"rep {rep} {name:6s} TTFT p50 {stream['ttft_p50_us']:7.0f} µs  "
                f"p99 {stream['ttft_p99_us']:7.0f} µs  stream {stream['total_p50_us']:7.0f} µs  "
                f"other {fmt(stream['other_on_sut_pct'])}%  err {stream['errors']}"
            )
    finally:
        if server is not None:
            server.stop()
    return cells, stream, headers


def run(args: argparse.Namespace, tmp: Path, stem: Path) -> dict[str, Any]:
    bodies = {"json": tmp / "chat.json", "stream": tmp / "chat_stream.json"}
    bodies["json"].write_text(json.dumps(CHAT, separators=(",", ":")))
    bodies["stream"].write_text(json.dumps({**CHAT, "stream": True}, separators=(",", ":")))
    cells: list[dict[str, Any]] = []
    streams: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    mock = start_mock(stem, args)
    try:
        for rep in range(1, args.repeats + 1):
            order = list(args.targets) if rep % 2 else list(reversed(args.targets))
            for name in order:
                try:
                    got, stream, headers = measure_target(name, rep, mock, tmp, stem, bodies, args)
                except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
                    # One broken target must not lose the rest of the run.
                    log(f"rep {rep} {name}: FAILED: {exc}")
                    failures.append({"rep": rep, "target": name, "error": str(exc)[:2000]})
                    continue
                cells += got
                if stream is not None:
                    streams.append(stream)
                checks.setdefault(name, headers)
    finally:
        mock.stop()
    return {"cells": cells, "streams": streams, "checks": checks, "failures": failures}


# ------------------------------------------------------------------ report
def by_rep(rows: list[dict[str, Any]], target: str, conc: int | None = None) -> dict[int, Any]:
    return {
        r["rep"]: r
        for r in rows
        if r["target"] == target and (conc is None or r.get("conc") == conc)
    }


def paired(a: dict[int, Any], b: dict[int, Any], f: Any) -> list[float]:
    """f(a, b) for every repeat that measured both: ratios of targets run side by side."""
    return [float(f(a[r], b[r])) for r in sorted(a) if r in b]


def verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "—"
    return "**PASS**" if value <= limit else "**MISS**"


def report(data: dict[str, Any], args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    cells, streams, env = data["cells"], data["streams"], data["env"]
    targets = [t for t in TARGETS if any(c["target"] == t for c in cells)]
    where = env.get("router", "?")
    if not where.startswith("git "):
        where = f"{where} at {env.get('git', '?')}"
    lines = [
        "## Forwarding: router vs direct, nginx and a naive aiohttp proxy",
        "",
        f"router {where}; {env['cpu']}; proxy under test "
        f"on CPU {args.sut_cpu}, wrk + mock upstream (aiohttp) + SSE client on CPU "
        f"{args.load_cpu}; {args.repeats} repeats x {args.duration:g} s per cell; medians over "
        "repeats, per-repeat values in brackets; differences and ratios per repeat, then their "
        "median. Versions: " + env.get("versions", "?"),
        "",
        "| target | conc | req/s [per repeat] | p50 ms | p99 ms | +p50 ms vs direct "
        "| SUT CPU µs/req [per repeat] | SUT CPU % | other on SUT core % [per repeat] "
        "| mock CPU µs/req | upstream calls/req | errors |",
        "|---|---:|---|---:|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    for target in targets:
        for conc in args.concurrency:
            rs = by_rep(cells, target, conc)
            if not rs:
                continue
            rows = [rs[r] for r in sorted(rs)]
            added = paired(
                rs, by_rep(cells, "direct", conc), lambda x, y: x["p50_us"] - y["p50_us"]
            )
            rps = [r["rps"] for r in rows]
            cpu = [r["cpu_us_per_req"] for r in rows]
            other = [r["other_on_sut_pct"] for r in rows if r["other_on_sut_pct"] is not None]
            whose = f" (mock, CPU {args.load_cpu})" if target == "direct" else ""
            flag = " !" if any(r["noisy"] for r in rows) else ""
            calls = [r["upstream_per_req"] for r in rows if "upstream_per_req" in r]
            lines.append(
                f"| {target} | {conc} | {fmt(median(rps))} {brackets(rps)} "
                f"| {fmt(median(r['p50_us'] / 1e3 for r in rows), 3)} "
                f"| {fmt(median(r['p99_us'] / 1e3 for r in rows), 3)} "
                f"| {'—' if target == 'direct' else fmt(median(a / 1e3 for a in added), 3)} "
                f"| {fmt(median(cpu), 1)} {brackets(cpu, 1)}{whose} "
                f"| {fmt(median(r['cpu_pct'] for r in rows))} "
                f"| {fmt(median(other))} {brackets(other) if other else ''}{flag} "
                f"| {fmt(median(r['upstream_cpu_us_per_req'] for r in rows), 1)} "
                f"| {fmt(median(calls), 3)} "
                f"| {sum(r['errors'] for r in rows)} |"
            )
    summary: dict[str, Any] = {"cpu_ratio": {}, "added_p50_us": {}, "ttft_overhead_us": {}}
    if streams:
        lines += [
            "",
            f"Streaming: time to first SSE event, {args.ttft_requests} sequential streams per "
            f"target and repeat over one keep-alive connection (mock: first event at once, then "
            f"{args.sse_chunks + 1} more every {args.sse_delay_ms:g} ms, then [DONE]).",
            "",
            "| target | TTFT p50 µs [per repeat] | TTFT p99 µs | overhead p50 µs vs direct "
            "[per repeat] | whole stream p50 µs | other on SUT core % | errors |",
            "|---|---|---:|---|---:|---:|---:|",
        ]
        direct = by_rep(streams, "direct")
        for target in targets:
            ss = by_rep(streams, target)
            if not ss:
                continue
            rows = [ss[r] for r in sorted(ss)]
            p50 = [r["ttft_p50_us"] for r in rows]
            other = [r["other_on_sut_pct"] for r in rows if r["other_on_sut_pct"] is not None]
            over = paired(ss, direct, lambda x, y: x["ttft_p50_us"] - y["ttft_p50_us"])
            if target != "direct" and over:  # no direct stream in the run: no overhead to state
                summary["ttft_overhead_us"][target] = {"median": median(over), "per_repeat": over}
            lines.append(
                f"| {target} | {fmt(median(p50))} {brackets(p50)} "
                f"| {fmt(median(r['ttft_p99_us'] for r in rows))} "
                f"| {'—' if target == 'direct' else fmt(median(over)) + ' ' + brackets(over)} "
                f"| {fmt(median(r['total_p50_us'] for r in rows))} "
                f"| {fmt(median(other))} "
                f"| {sum(r['errors'] for r in rows)} |"
            )

    def cpu_ratio(a: str, b: str, conc: int) -> list[float]:
        return paired(
            by_rep(cells, a, conc),
            by_rep(cells, b, conc),
            lambda x, y: x["cpu_us_per_req"] / y["cpu_us_per_req"],
        )

    lines += [
        "",
        "### Ratios and targets (issue 3)",
        "",
        "| measure | conc | value [per repeat] | target | verdict |",
        "|---|---:|---|---|---|",
    ]
    for conc in args.concurrency:
        for a, b in (("router", "naive"), ("router", "nginx"), ("naive", "nginx")):
            ratios = cpu_ratio(a, b, conc)
            if not ratios:
                continue
            m = median(ratios)
            summary["cpu_ratio"][f"{a}/{b}@{conc}"] = {"median": m, "per_repeat": ratios}
            target = f"≤ {CPU_TARGET}x (aim 1.0x)" if (a, b) == ("router", "naive") else ""
            ok = verdict(m, CPU_TARGET) if target else ""
            lines.append(
                f"| CPU/request {a}/{b} | {conc} | **{fmt(m, 2)}x** {brackets(ratios, 2)} "
                f"| {target} | {ok} |"
            )
        extra = paired(
            by_rep(cells, "router", conc),
            by_rep(cells, "naive", conc),
            lambda x, y: x["cpu_us_per_req"] - y["cpu_us_per_req"],
        )
        if extra:
            lines.append(
                f"| CPU/request router minus naive (µs) | {conc} | {fmt(median(extra), 1)} "
                f"{brackets(extra, 1)} | | |"
            )
    for target in ("router", "naive", "nginx"):
        added = paired(
            by_rep(cells, target, 1),
            by_rep(cells, "direct", 1),
            lambda x, y: x["p50_us"] - y["p50_us"],
        )
        if not added:
            continue
        m = median(added)
        summary["added_p50_us"][target] = {"median": m, "per_repeat": added}
        is_router = target == "router"
        lines.append(
            f"| added p50 vs direct, {target} (ms) | 1 | **{fmt((m or 0) / 1e3, 3)}** "
            f"{brackets([a / 1e3 for a in added], 3)} "
            f"| {'≤ 0.5 ms' if is_router else ''} "
            f"| {verdict(m, ADDED_P50_TARGET_US) if is_router else ''} |"
        )
    for target in ("router", "naive", "nginx"):
        over = summary["ttft_overhead_us"].get(target)
        if over is None:
            continue
        is_router = target == "router"
        lines.append(
            f"| TTFT overhead p50 vs direct, {target} (ms) | 1 | "
            f"**{fmt((over['median'] or 0) / 1e3, 3)}** "
            f"{brackets([v / 1e3 for v in over['per_repeat']], 3)} "
            f"| {'≤ 1 ms' if is_router else ''} "
            f"| {verdict(over['median'], TTFT_TARGET_US) if is_router else ''} |"
        )
    lines += ["", closing_note(summary, args), ""]
    if data["checks"]:
        lines += ["Headers of the first answer per target:", ""]
        lines += [f"- {t}: {json.dumps(h)}" for t, h in data["checks"].items()]
        lines.append("")
    noisy = [c for c in cells if c["noisy"]]
    if noisy:
        lines += [
            f"'!' marks cells still above {args.max_other:g}% other load on the SUT core after "
            f"{args.reruns} rerun(s): "
            + ", ".join(f"{c['target']} c={c['conc']} rep {c['rep']}" for c in noisy),
            "",
        ]
    if data["failures"]:
        lines += ["### Failures", ""]
        lines += [f"- rep {f['rep']} {f['target']}: {f['error']}" for f in data["failures"]]
        lines.append("")
    return "\n".join(lines), summary


def closing_note(summary: dict[str, Any], args: argparse.Namespace) -> str:
    """One line for the issue: the target ratios with their verdicts."""
    parts = []
    for conc in args.concurrency:
        r = summary["cpu_ratio"].get(f"router/naive@{conc}")
        n = summary["cpu_ratio"].get(f"router/nginx@{conc}")
        if r:
            parts.append(
                f"c={conc}: router/naive CPU {fmt(r['median'], 2)}x "
                f"({'PASS' if r['median'] <= CPU_TARGET else 'MISS'} ≤ {CPU_TARGET}x), "
                f"router/nginx {fmt(n['median'] if n else None, 1)}x"
            )
    added = summary["added_p50_us"].get("router")
    if added:
        ok = "PASS" if added["median"] <= ADDED_P50_TARGET_US else "MISS"
        parts.append(f"added p50 at c=1 {fmt(added['median'] / 1e3, 3)} ms ({ok} ≤ 0.5 ms)")
    over = summary["ttft_overhead_us"].get("router")
    if over:
        ok = "PASS" if over["median"] <= TTFT_TARGET_US else "MISS"
        parts.append(f"TTFT overhead p50 {fmt(over['median'] / 1e3, 3)} ms ({ok} ≤ 1 ms)")
    return "**Closing note:** " + "; ".join(parts) + "."


# ------------------------------------------------------------------ profile
def profile(args: argparse.Namespace, tmp: Path, stem: Path) -> int:
    """A proxy (the router by default) under c=`--profile-conc` load: first a plain cell for its
    CPU per request, then the same load with py-spy attached; raw stacks + a summary."""
    if not Path(PY_SPY).exists():
        log(f"{PY_SPY} not found: /work/venv/bin/pip install py-spy")
        return 2
    name, conc, seconds = args.profile_target, args.profile_conc, args.profile_seconds
    body = tmp / "chat.json"
    body.write_text(json.dumps(CHAT, separators=(",", ":")))
    raw = Path(f"{stem}.{name}.pyspy.txt")
    mock = start_mock(stem, args)
    try:
        server = make_server(name, mock, tmp, stem, 0, args).start()
        try:
            url = f"{server.base}/v1/chat/completions"
            load(url, conc, 2, args.load_cpu, body)
            plain = cell(name, url, conc, server.pgid, mock, body, args)
            log(
                f"{name} c={conc} without profiler: {plain['rps']:,.0f} req/s, "
                f"{plain['cpu_us_per_req']:.1f} µs CPU/req, other {plain['other_on_sut_pct']:.0f}%"
            )
            loaded: dict[str, Any] = {}

            def background() -> None:
                loaded.update(load(url, conc, seconds + 3, args.load_cpu, body))

            thread = threading.Thread(target=background)
            thread.start()
            time.sleep(1)
            argv = ["taskset", "-c", args.load_cpu, PY_SPY, "record", "-p", str(server.pgid)]
            argv += ["-r", "250", "-d", str(seconds), "-f", "raw", "-o", str(raw)]
            run_child(argv, None, timeout=seconds + 60)
            thread.join()
        finally:
            server.stop()
    finally:
        mock.stop()
    text = summarize_profile(raw, plain["cpu_us_per_req"])
    heading = (
        f"{name} ({args.router_label if name == 'router' else 'bench/naive_proxy.py'}), "
        f"c={conc}: {plain['rps']:,.0f} req/s and {plain['cpu_us_per_req']:.1f} µs CPU per "
        f"request without the profiler, {loaded.get('rps', 0):,.0f} req/s under py-spy "
        f"(-r 250, {seconds} s).\n\n"
    )
    Path(f"{stem}.{name}.pyspy.md").write_text(heading + text)
    print(heading + text)
    log(f"wrote {raw} and .md")
    return 0


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_CLIENT = {"client.py", "client_reqrep.py", "connector.py", "client_proto.py"}
_CLIENT_SIDE = "aiohttp client (request, pool, response)"
_SERVER_SIDE = "aiohttp server (protocol, request, response)"
_ROUTER_SIDE = "router/ code (and the stdlib/C it calls)"
_LOOP_SIDE = "event loop (uvloop, asyncio) and the rest"


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw.strip())
        out.append((m.group("func"), m.group("file")) if m else (raw.strip(), ""))
    return out


def _where(file: str) -> str:
    return "router/" + file.split("router/", 1)[1] if "router/" in file else file


_ROOTS = {"router/cli.py", "router/server.py", "router/__main__.py"}  # under every loop stack
_TRANSPORT = "router/upstreams/client.py"
# What the router's own time is spent on, by the module of the innermost router frame.
_AREAS = {
    "detection and redaction": (
        "router/redaction/",
        "router/stages/classify.py",
        "router/privacy.py",
        "router/policy/residency.py",
    ),
    "audit trail": ("router/audit/", "router/trail.py"),
    "response cache": ("router/stages/cache.py", "router/cache.py", "router/singleflight.py"),
    "forwarding (upstreams/, forwarding.py, headers.py)": (
        "router/upstreams/",
        "router/forwarding.py",
        "router/headers.py",
    ),
    "request context, pipeline, response (api/, pipeline.py)": (
        "router/api/",
        "router/pipeline.py",
        "router/context.py",
    ),
    "route decision": ("router/stages/route.py", "router/policy/", "router/budget.py"),
    "parse, dispatch": ("router/stages/parse.py", "router/stages/dispatch.py"),
}


def _area(module: str) -> str:
    return next((a for a, pre in _AREAS.items() if module.startswith(pre)), f"other: {module}")


def _kind(file: str) -> str:
    if "router/" in file:
        return "other" if _where(file) in _ROOTS else "router"
    if "aiohttp/" in file:
        return "client" if Path(file).name in _CLIENT else "aiohttp"
    return "other"


def _side(frames: list[tuple[str, str]]) -> tuple[str, str | None]:
    """Who a sample's time belongs to: the innermost frame that is the router's or aiohttp's
    (stdlib and C code count for whoever called them). Returns (side, innermost router frame
    when the router owns it)."""
    kinds = [_kind(file) for _, file in frames]
    # aiohttp's shared parts (streams, writer, helpers) work for the client when called from
    # the client or from the router's transport module (reading an upstream response).
    for_client = "client" in kinds or any(_where(f) == _TRANSPORT for _, f in frames)
    for (func, file), kind in zip(reversed(frames), reversed(kinds), strict=True):
        if kind == "router":
            return _ROUTER_SIDE, f"{func} ({_where(file)})"
        if kind == "client" or (kind == "aiohttp" and for_client):
            return _CLIENT_SIDE, None
        if kind == "aiohttp":
            return _SERVER_SIDE, None
    return _LOOP_SIDE, None


def summarize_profile(raw: Path, cpu_us_per_req: float | None = None) -> str:
    """Where the router's event-loop thread spends its samples: by side (router code, aiohttp
    server, aiohttp client, loop), by router/ module and function (inclusive and owned), and
    self time. Worker threads (inference, redaction, audit) are listed apart: py-spy counts a
    thread blocked on its queue as active."""
    total = idle = 0
    sides: collections.Counter[str] = collections.Counter()
    owned: collections.Counter[str] = collections.Counter()
    owned_modules: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if frames[0][0].startswith("Thread._bootstrap"):
            # Worker threads, mostly waiting on their queue (py-spy counts that as busy).
            idle += count
            threads[f"{frames[-1][0]} ({_where(frames[-1][1])})"] += count
            continue
        total += count
        side, router_frame = _side(frames)
        sides[side] += count
        if router_frame is None:
            areas[side] += count
        else:
            owned[router_frame] += count
            module = router_frame.rsplit("(", 1)[1].rstrip(")")
            owned_modules[module] += count
            areas[f"router: {_area(module)}"] += count
        inside = [(fn, _where(f)) for fn, f in frames if _kind(f) == "router"]
        for module in {where for _, where in inside}:
            modules[module] += count
        for name in {f"{fn} ({where})" for fn, where in inside}:
            functions[name] += count
        func, file = frames[-1]
        own[f"{func} ({_where(file)})"] += count

    def table(
        title: str, counts: collections.Counter[str], n: int, cpu: float | None = cpu_us_per_req
    ) -> list[str]:
        rows = [f"### {title}", "", "| % of loop samples | ≈ µs/request | where |"]
        rows.append("|---:|---:|---|")
        for key, c in counts.most_common(n):
            share = c / max(1, total)
            us = fmt(share * cpu, 1) if cpu else "—"
            rows.append(f"| {100 * share:.1f} | {us} | `{key}` |")
        return [*rows, ""]

    lines = [
        f"## py-spy profile of the proxy's event loop under load ({total} samples; "
        f"{idle} samples of worker threads apart, at the end)",
        "",
        "A sample belongs to the innermost frame that is the router's or aiohttp's; stdlib and "
        "C code count for their caller. aiohttp's writer and stream reader count as client "
        "when the stack holds a client call or the router's transport (router/upstreams/"
        "client.py).",
        "",
    ]
    lines += table("By side", sides, 10)
    lines += table("By area (router time by the module of its innermost frame)", areas, 20)
    lines += table("Owned by router/ module (innermost router frame)", owned_modules, 25)
    lines += table("Owned by router/ function (innermost router frame)", owned, 25)
    lines += table("Inclusive, by router/ module", modules, 20)
    lines += table("Inclusive, by router/ function", functions, 30)
    lines += table("Self time (leaf frame)", own, 30)
    title = "Worker threads, by leaf frame (mostly waiting on their queue: not CPU)"
    lines += table(title, threads, 10, None)
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def env_info(args: argparse.Namespace) -> dict[str, Any]:
    env = None if args.router_src is None else dict(os.environ, PYTHONPATH=str(args.router_src))
    versions = subprocess.run(
        [
            PY,
            "-c",
            "import sys, aiohttp, uvloop, router; print('Python', sys.version.split()[0], "
            "'aiohttp', aiohttp.__version__, 'uvloop', uvloop.__version__, "
            "'router', router.__version__)",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    ).stdout.strip()
    nginx = ""
    if NGINX:
        nginx = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    return {
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "versions": f"{versions}, {nginx.replace('nginx version: ', '')}",
        "load": "wrk" if WRK else "closed_loop.py (wrk missing)",
        "router": args.router_label,
        "git": git_state(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measured cell")
    ap.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of load per target before its cells"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", default="1,16,64", help="comma-separated connection counts")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset")
    ap.add_argument("--ttft-targets", default=",".join(TARGETS))
    ap.add_argument("--ttft-requests", type=int, default=200)
    ap.add_argument("--sse-chunks", type=int, default=5, help="content events per stream")
    ap.add_argument("--sse-delay-ms", type=float, default=1.0, help="between stream events")
    ap.add_argument(
        "--max-other",
        type=float,
        default=5.0,
        help="%% of the SUT core busy with other work above which a cell is measured again",
    )
    ap.add_argument("--reruns", type=int, default=1, help="extra tries for a noisy cell")
    ap.add_argument("--router-src", type=Path, help="folder holding the `router` package to run")
    ap.add_argument(
        "--router-rev",
        help="run this git revision's router (e.g. HEAD: committed code while the working tree "
        "is being edited), from a `git archive` snapshot",
    )
    ap.add_argument("--sut-cpu", default="0", help="CPU for the proxy under test")
    ap.add_argument("--load-cpu", default="1", help="CPU for wrk, the mock and this script")
    ap.add_argument("--report", type=Path, help="only re-render the report of a results .json")
    ap.add_argument("--profile", action="store_true", help="py-spy a proxy under load")
    ap.add_argument("--profile-target", default="router", choices=("router", "naive"))
    ap.add_argument("--profile-seconds", type=int, default=8)
    ap.add_argument("--profile-conc", type=int, default=16)
    args = ap.parse_args(argv)
    args.concurrency = tuple(int(c) for c in args.concurrency.split(","))
    args.targets = tuple(t for t in args.targets.split(",") if t)
    args.ttft_targets = tuple(t for t in args.ttft_targets.split(",") if t)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        ap.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.router_src is not None:
        args.router_src = args.router_src.resolve()
    args.router_label = str(args.router_src) if args.router_src else ROUTER_BIN
    return args


def snapshot(args: argparse.Namespace, tmp: Path) -> None:
    """`git archive` of the revision's router and the data it ships with, run via --router-src."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", args.router_rev],
        cwd=HERE,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    folder = tmp / "router-src"
    folder.mkdir()
    archive = subprocess.run(
        ["git", "archive", commit, "router", "policies", "edge_models"],
        cwd=HERE.parent,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    args.router_src = folder
    args.router_label = f"git {args.router_rev} = {commit} (snapshot)"
    log(f"router from {args.router_label}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        return rerender(args.report, report)
    stem = prepare_run(args, "forwarding")
    if stem is None:
        return 2
    started = time.monotonic()
    with stop_children_on_exit(), tempfile.TemporaryDirectory(prefix="bench-fwd-") as tmp_name:
        tmp = Path(tmp_name)
        if args.router_rev:
            snapshot(args, tmp)
        try:
            if args.profile:
                return profile(args, tmp, stem)
            env = env_info(args)
            data = run(args, tmp, stem)
        except KeyboardInterrupt:
            log("interrupted: servers stopped, no report")
            return 130
    data["env"] = env
    return save_run(stem, data, report, args, started)


if __name__ == "__main__":
    sys.exit(main())
