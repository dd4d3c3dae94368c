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

Parts: forwarding_targets.py (the servers and their checks), forwarding_measure.py (cells and
TTFT), forwarding_report.py, forwarding_profile.py; the run itself is harness.run_bench.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from forwarding_measure import run
from forwarding_profile import profile
from forwarding_report import report
from forwarding_targets import NGINX, TARGETS
from harness import ROUTER_BIN, WRK, Bench, git_state, run_bench
from processes import HERE, PY, log
from procstat import cpu_model


def env_info(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
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


def before(args: argparse.Namespace, tmp: Path, stem: Path) -> int | None:
    """--router-rev: measure that revision's snapshot; --profile: a profile instead of a table."""
    if args.router_rev:
        snapshot(args, tmp)
    return profile(args, tmp, stem) if args.profile else None


BENCH = Bench(
    name="forwarding",
    tmp_prefix="bench-fwd-",
    report=report,
    measure=run,
    env_info=env_info,
    before=before,
)


def main(argv: list[str] | None = None) -> int:
    return run_bench(BENCH, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
