"""Every benchmark side by side in one command, written up as a Markdown report with plots.

    python bench/report.py                                   # ≈ 10 min with the defaults
    python bench/report.py --duration 2 --repeats 1          # a quick look (noisy)
    python bench/report.py --only forwarding,litellm --concurrency 1,16,64
    python bench/report.py --from-json bench/results/report-X/report.json   # re-render

Runs bench/forwarding.py (router vs direct, nginx, naive aiohttp proxy), LiteLLM through the
peer harness in ../shared/peers-bench (when it is installed; the report says so when not),
bench/cache_hit.py (audit on and off), bench/local_inference.py and bench/redaction_eval.py,
each as its own process; one that fails is reported as failed, never left out silently.
Writes bench/results/report-<time>/: report.md, report.json, one PNG per section, each
benchmark's log."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import RESULTS, git_state
from processes import HERE, PY, log
from procstat import cpu_model
from report_render import render

ROOT = HERE.parent
# The peer harness lives beside the project checkout (../shared/peers-bench).
PEERS = Path(os.environ.get("PEERS_BENCH_DIR", ROOT.parent / "shared" / "peers-bench"))
BENCHES = ("forwarding", "litellm", "cache_hit", "local_inference", "redaction")
Section = dict[str, Any]


def run_script(name: str, argv: list[str], out: Path, timeout: float, **env: str) -> Section:
    """Run one benchmark; its output goes to `<name>.log`; a failure becomes the section."""
    log(f"{name}: {' '.join(argv[1:])}")
    started = time.monotonic()
    with (out / f"{name}.log").open("w") as log_file:
        try:
            done = subprocess.run(
                argv,
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                env={**os.environ, **env},
            )
        except subprocess.TimeoutExpired:
            return {"status": "failed", "note": f"timed out after {timeout:.0f} s ({name}.log)"}
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        return {"status": "failed", "note": f"exit code {done.returncode}; see {name}.log"}
    return {"status": "ok", "elapsed_s": round(elapsed, 1)}


def newest(pattern: str, since: float) -> Path | None:
    found = [p for p in RESULTS.glob(pattern) if p.stat().st_mtime >= since]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def figures(cell: dict[str, Any], target: str, cpu_key: str = "cpu_us_per_req") -> dict[str, Any]:
    return {
        "target": target,
        "conc": cell["conc"],
        "rep": cell.get("rep", 1),
        "rps": cell.get("rps"),
        "p50_us": cell.get("p50_us"),
        "p99_us": cell.get("p99_us"),
        "cpu_us_per_req": cell.get(cpu_key),
        # Busy time on the server's core not charged to the server: neighbours disturbing it.
        "other_on_sut_pct": cell.get("other_on_sut_pct"),
    }


def forwarding(args: argparse.Namespace, out: Path) -> Section:
    since = time.time()
    argv = [PY, str(HERE / "forwarding.py"), *common(args), "--ttft-requests", "50"]
    section = run_script("forwarding", [*argv, "--reruns", "0"], out, args.timeout)
    found = newest("forwarding-*.json", since)
    if section["status"] == "ok" and found is not None:
        data = json.loads(found.read_text())
        section["rows"] = [figures(c, c["target"]) for c in data["cells"]]
        section["streams"] = data.get("streams", [])
    return section


def litellm(args: argparse.Namespace, out: Path) -> Section:
    if not Path(args.litellm_bin).exists():
        return {
            "status": "not run",
            "note": f"LiteLLM is not installed on this machine ({args.litellm_bin} is missing; "
            f"{args.peers_dir / 'setup.sh'} installs it from PyPI). The peer harness's README "
            "gives its figure, measured elsewhere: ~11,600 CPU µs per request.",
        }
    peers_out = out / "peers"
    section = run_script(
        "litellm",
        ["python3", str(args.peers_dir / "run.py")],
        out,
        args.timeout,
        TARGETS="litellm",
        FLOORS="",
        ORT_BENCH="0",
        DURATION=str(max(1, round(args.duration))),
        WARMUP="1",
        REPEATS=str(args.repeats),
        CONCURRENCY=" ".join(str(c) for c in args.concurrency),
        OUT_DIR=str(peers_out),
        LITELLM_BIN=args.litellm_bin,
    )
    results = peers_out / "results.json"
    if section["status"] == "ok" and results.exists():
        cells = json.loads(results.read_text())["results"]
        rows = [figures(c, "litellm", "sut_cpu_us_per_req") for c in cells]
        section["rows"] = [r for c, r in zip(cells, rows, strict=True) if c["target"] == "litellm"]
    return section


def cache_hit(args: argparse.Namespace, out: Path) -> Section:
    path = out / "cache_hit.json"
    argv = [PY, str(HERE / "cache_hit.py"), "--duration", str(args.duration)]
    argv += ["--repeats", str(args.repeats), "--concurrency", concurrency(args)]
    section = run_script("cache_hit", [*argv, "--json", str(path)], out, args.timeout)
    if section["status"] == "ok" and path.exists():
        cells = json.loads(path.read_text())["cells"]
        section["rows"] = [figures(c, c["server"]) for c in cells]
    return section


def local_inference(args: argparse.Namespace, out: Path) -> Section:
    since = time.time()
    argv = [PY, str(HERE / "local_inference.py"), *common(args)]
    section = run_script("local_inference", argv, out, args.timeout)
    found = newest("local_inference-*.json", since)
    if section["status"] == "ok" and found is not None:
        cells = json.loads(found.read_text())["cells"]
        section["rows"] = [figures(c, f"{c['server']} {c['model']}") for c in cells]
    return section


def redaction(args: argparse.Namespace, out: Path) -> Section:
    argv = [PY, str(HERE / "redaction_eval.py"), "--records", str(args.redaction_records)]
    argv += ["--near-misses", str(args.redaction_records // 3)]
    note = None
    if importlib.util.find_spec("presidio_analyzer") is None:
        argv.append("--skip-presidio")
        note = "Presidio is not installed here (bench extra): our detectors only."
    section = run_script("redaction", argv, out, args.timeout)
    if section["status"] == "ok":
        section["text"] = (out / "redaction.log").read_text()
        section["note"] = note
    return section


def common(args: argparse.Namespace) -> list[str]:
    return [
        "--duration",
        str(args.duration),
        "--warmup",
        "1",
        "--repeats",
        str(args.repeats),
        "--concurrency",
        concurrency(args),
    ]


def concurrency(args: argparse.Namespace) -> str:
    return ",".join(str(c) for c in args.concurrency)


RUNNERS: dict[str, Callable[[argparse.Namespace, Path], Section]] = {
    "forwarding": forwarding,
    "litellm": litellm,
    "cache_hit": cache_hit,
    "local_inference": local_inference,
    "redaction": redaction,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measured cell")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", default="1,16", help="comma-separated connection counts")
    ap.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset")
    ap.add_argument("--redaction-records", type=int, default=3000)
    ap.add_argument("--timeout", type=float, default=1800.0, help="per benchmark, seconds")
    ap.add_argument("--litellm-bin", default="/tmp/litellm-venv/bin/litellm")
    ap.add_argument("--peers-dir", type=Path, default=PEERS, help="the peer benchmark harness")
    ap.add_argument("--out", type=Path, help="default: bench/results/report-<time>/")
    ap.add_argument("--from-json", type=Path, help="only render a saved report.json again")
    args = ap.parse_args(argv)
    args.concurrency = tuple(int(c) for c in args.concurrency.split(","))
    args.only = [b for b in args.only.split(",") if b]
    unknown = set(args.only) - set(BENCHES)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        data = json.loads(args.from_json.read_text())
        out = args.out or args.from_json.parent
    else:
        out = args.out or RESULTS / f"report-{dt.datetime.now():%Y%m%d-%H%M%S}"
        out.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "from_json")}
        data = {
            "started": f"{dt.datetime.now():%Y-%m-%d %H:%M}",
            "env": {"git": git_state(), "cpu": cpu_model(), "python": sys.version.split()[0]},
            "settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
            "benches": {},
        }
        for name in args.only:
            data["benches"][name] = RUNNERS[name](args, out)
            log(f"{name}: {data['benches'][name]['status']}")
            (out / "report.json").write_text(json.dumps(data, indent=1, default=str))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(render(data, out))
    log(f"wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
