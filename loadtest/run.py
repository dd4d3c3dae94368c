"""Bounded, unattended load test: start a demo topology, run one locust scenario headless
against its edge, stop everything, write locust's CSV and HTML report plus a summary.

    python -m loadtest.run --scenario mix --duration 20s
    python -m loadtest.run --scenario outage --duration 2m --users 20 --out /tmp/lt

Exit code 0 when requests were made and the failure ratio is within --max-failure-ratio."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from loadtest.summary import markdown, summarize
from loadtest.topology import ROOT, DemoTopology, child_env

SCENARIOS = {
    "cache-hit": "CacheHitUser",
    "local-inference": "LocalInferenceUser",
    "chat": "ChatUser",
    "mix": "ResidencyMixUser",
    "outage": "OutageUser",
}
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def seconds(text: str) -> float:
    """`20s`, `2m`, `1m30s` or a bare number of seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 20s, 2m, 1m30s)")
    h, m, s = (int(g or 0) for g in parts.groups())
    return float(h * 3600 + m * 60 + s)


def run_time(text: str) -> float:
    """A duration of at least a second: locust takes whole seconds, and `-t 0s` means no
    limit at all (a run that only the runner's timeout would end, with a traceback)."""
    value = seconds(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"a load test runs at least 1 s, not {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="mix")
    ap.add_argument("--duration", type=run_time, default=20.0, help="e.g. 20s, 2m")
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second")
    ap.add_argument("--out", type=Path, help="default: loadtest/results/<scenario>-<time>")
    ap.add_argument("--max-failure-ratio", type=float, default=0.05)
    return ap.parse_args(argv)


def run_locust(args: argparse.Namespace, edge: str, out: Path, env: dict[str, str]) -> int:
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        f"{int(args.duration)}s",
        "--stop-timeout",
        "5",
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "report.html"),
        "--exit-code-on-error",
        "0",
        "-H",
        edge,
        SCENARIOS[args.scenario],
    ]
    with (out / "locust.log").open("w") as log:
        done = subprocess.run(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=args.duration + 90
        )
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "loadtest" / "results" / f"{args.scenario}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    env = child_env()
    outage = None
    if args.scenario == "outage":
        outage = (args.duration / 3, 2 * args.duration / 3)
        env["LOADTEST_OUTAGE"] = f"{outage[0]},{outage[1]}"
    print(f"loadtest: {args.scenario}, {args.users} users, {args.duration:.0f} s -> {out}")
    with DemoTopology(out / "demo") as demo:
        env["LOADTEST_CONTROL_URL"] = demo.topology["control"]
        code = run_locust(args, demo.topology["edge"], out, env)
    if code != 0 or not (out / "locust_stats.csv").exists():
        print(f"error: locust exited with {code}; see {out / 'locust.log'}", file=sys.stderr)
        return 1
    meta = {
        "scenario": args.scenario,
        "users": args.users,
        "duration_s": args.duration,
        "outage": outage,
    }
    summary = summarize(out / "locust_stats.csv", meta)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    print(f"report: {out / 'report.html'}")
    ratio = summary["failure_ratio"]
    return 0 if ratio is not None and ratio <= args.max_failure_ratio else 1


if __name__ == "__main__":
    raise SystemExit(main())
