"""What the benchmark scripts share besides their processes (processes.py) and CPU accounting
(procstat.py): the closed-loop load generator (wrk, else closed_loop.py), report formatting,
and the run every script's main() makes (`run_bench`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processes import HERE, PY, log, run_child, stop_children_on_exit

RESULTS = HERE / "results"
ROUTER_BIN = str(Path(PY).with_name("layer-router"))
WRK = shutil.which("wrk")


# ------------------------------------------------------------------ load
def load(
    url: str,
    conc: int,
    seconds: float,
    cpu: str,
    body: Path,
    content_type: str = "application/json",
    header_length: int | None = None,
) -> dict[str, Any]:
    """One closed-loop run of `conc` connections (wrk_post.lua, or closed_loop.py without wrk):
    the summary line it prints, as a dict (requests, duration_us, p50_us, p99_us, err_*...)."""
    if WRK:
        env = dict(
            os.environ,
            WRK_BODY_FILE=str(body),
            WRK_CONTENT_TYPE=content_type,
            WRK_HEADER_LENGTH="" if header_length is None else str(header_length),
        )
        secs = max(1, round(seconds))  # wrk takes whole seconds
        argv = [WRK, "-t1", f"-c{conc}", f"-d{secs}s", "--timeout", "10s"]
        argv += ["-s", str(HERE / "wrk_post.lua"), url]
    else:
        env = None
        argv = [PY, str(HERE / "closed_loop.py"), url, "--connections", str(conc)]
        argv += ["--seconds", str(seconds), "--body", str(body), "--content-type", content_type]
        if header_length is not None:
            argv += ["--header-length", str(header_length)]
    out = run_child(["taskset", "-c", cpu, *argv], env, timeout=seconds + 60)
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"no summary line from the load generator: {out[-500:]}")
    result: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
    result["errors"] = sum(v for k, v in result.items() if k.startswith("err_"))
    result["rps"] = result["requests"] / max(1e-9, result["duration_us"] / 1e6)
    return result


# ------------------------------------------------------------------ report helpers
def median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def fmt(x: float | None, nd: int = 0) -> str:
    return "—" if x is None else f"{x:,.{nd}f}"


def brackets(values: Iterable[float], nd: int = 0) -> str:
    return "[" + ", ".join(fmt(v, nd) for v in values) + "]"


def git_state() -> str:
    """The checkout's commit, and whether router/ had uncommitted changes during the run."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "../router"],
            cwd=HERE,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' + uncommitted router/ changes' if dirty else ''}"


# ------------------------------------------------------------------ run preamble
ReportFn = Any  # (data, args) -> (markdown text, ...)


def rerender(path: Path, report: ReportFn) -> int:
    """Print the report of a saved results .json again (`--report FILE`)."""
    import argparse

    data = json.loads(path.read_text())
    saved = dict(data["args"], concurrency=tuple(data["args"]["concurrency"]))
    print(report(data, argparse.Namespace(**saved))[0])
    return 0


def prepare_run(args: Any, name: str) -> Path | None:
    """Checks and set-up every benchmark does first: the router is installed, this script
    stays off the server's core, the results folder exists; the run's file stem, or None."""
    if args.router_src is None and not Path(ROUTER_BIN).exists():
        log(f"{ROUTER_BIN} not found: install the project into this interpreter's venv")
        return None
    # Keep this script off the server's core; wrk and the helpers are pinned separately.
    os.sched_setaffinity(0, {int(args.load_cpu)})
    RESULTS.mkdir(exist_ok=True)
    if not WRK:
        log("wrk not found (apt-get install -y wrk): falling back to bench/closed_loop.py")
    return RESULTS / f"{name}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def save_run(stem: Path, data: dict[str, Any], report: ReportFn, args: Any, started: float) -> int:
    """Render the report, add it and the run's arguments to `data`, write `<stem>.json` and
    `.md`, print the report; the exit code of a completed run."""
    text, summary = report(data, args)
    data.update(
        summary=summary,
        args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        elapsed_s=round(time.monotonic() - started, 1),
    )
    Path(f"{stem}.json").write_text(json.dumps(data, indent=1, default=str))
    Path(f"{stem}.md").write_text(text)
    print(text)
    log(f"done in {data['elapsed_s']:.0f} s; wrote {stem}.json and .md (server logs beside)")
    return 0


Hook = Callable[[Any, Path, Path], Any]  # (args, temp folder, results file stem) -> ...


@dataclass(frozen=True)
class Bench:
    """A benchmark script's parts, run the same way by `run_bench`."""

    name: str  # results go to bench/results/<name>-<time>.{json,md}
    tmp_prefix: str
    report: ReportFn
    measure: Hook  # -> the run's data (cells, failures, ...), saved as JSON
    env_info: Callable[[Any, Path], dict[str, Any]]  # (args, temp folder) -> data["env"]
    # Taken after measuring (it may describe files the run wrote) instead of before.
    env_after_measure: bool = False
    # Called first; an exit code ends the run there, with no report (e.g. a profile instead).
    before: Hook | None = None


def run_bench(bench: Bench, args: Any) -> int:
    """A script's main(): re-render a saved report (--report), or check the set-up, measure in
    a temporary folder with every child stopped on any exit, and save the results."""
    if args.report is not None:
        return rerender(args.report, bench.report)
    stem = prepare_run(args, bench.name)
    if stem is None:
        return 2
    started = time.monotonic()
    with stop_children_on_exit(), tempfile.TemporaryDirectory(prefix=bench.tmp_prefix) as name:
        tmp = Path(name)
        try:
            if bench.before is not None:
                code: int | None = bench.before(args, tmp, stem)
                if code is not None:
                    return code
            env = None if bench.env_after_measure else bench.env_info(args, tmp)
            data: dict[str, Any] = bench.measure(args, tmp, stem)
            if bench.env_after_measure:
                env = bench.env_info(args, tmp)
        except KeyboardInterrupt:
            log("interrupted: servers stopped, no report")
            return 130
    data["env"] = env
    return save_run(stem, data, bench.report, args, started)
