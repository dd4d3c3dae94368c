"""bench/forwarding.py's measurements: closed-loop cells (req/s, latency, CPU per request) and
time to first SSE event, per target and repeat, measured again while the SUT core was busy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from forwarding_targets import CHAT, check, make_server, start_mock
from harness import fmt, load
from processes import HERE, PY, Server, log, run_child
from procstat import CLK, Usage, cpu_figures


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
