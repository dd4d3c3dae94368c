"""Local inference through the router vs the Python serving floor vs in-process onnxruntime.

usage: /work/venv/bin/python bench/local_inference.py [--duration 5] [--repeats 3]
           [--concurrency 1,16,64] [--offload-floor] [--router-src DIR] [--report FILE.json]

Per repeat, one server at a time, pinned to the SUT core:
  floor   bench/floor_server.py: aiohttp + uvloop, orjson, session.run inline
  router  `layer-router serve --model-repository TMP` (default settings: the router's own
          inference threads, no tuning)
and for each (server, model, concurrency) a warm-up, then a fixed-duration closed-loop wrk run
pinned to the load core. Recorded: req/s, latency percentiles (wrk's), and the server process
group's CPU time (utime+stime from /proc) per request. In-process session.run cost of the same
inputs is measured on the SUT core with no server running. Medians over repeats; ratios are
computed per repeat (floor and router measured minutes apart) and their median printed.
Every server is started in its own session and stopped by its process group id, also on
Ctrl-C / SIGTERM / error. Results: bench/results/local_inference-<time>.{json,md}.
The report is local_inference_report.py; the run itself is harness.run_bench.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import models
from harness import ROUTER_BIN, WRK, Bench, git_state, run_bench
from harness import load as closed_loop
from local_inference_report import report
from processes import HERE, PY, Server, log, run_child
from procstat import Usage, cpu_figures, cpu_model


# ------------------------------------------------------------------ workloads
@dataclass(frozen=True)
class Workload:
    model: str  # model name in the URL (the same name on both servers)
    data: str  # "json" or "binary"
    body: Path
    header_length: int | None
    concurrency: tuple[int, ...]

    @property
    def content_type(self) -> str:
        return "application/json" if self.header_length is None else "application/octet-stream"


def make_workloads(folder: Path, concurrency: tuple[int, ...], image_size: int) -> list[Workload]:
    mlp_body = folder / "mlp.json"
    mlp_body.write_bytes(models.json_body("x", models.mlp_input()))
    image, header_length = models.binary_body("image", models.image_input(image_size))
    image_body = folder / "image.bin"
    image_body.write_bytes(image)
    mlp = [Workload(name, "json", mlp_body, None, concurrency) for name in models.MLP_VARIANTS]
    return [*mlp, Workload("image", "binary", image_body, header_length, (1,))]


# ------------------------------------------------------------------ load and measurement
def load(url: str, work: Workload, conc: int, seconds: float, cpu: str) -> dict[str, Any]:
    """One closed-loop run; the summary line wrk_post.lua (or closed_loop.py) prints."""
    return closed_loop(url, conc, seconds, cpu, work.body, work.content_type, work.header_length)


def run_time(server: Server, model: str) -> tuple[int, int]:
    """(calls, ns) spent in session.run so far, as the server itself counts them: the router's
    Triton-style stats (compute_infer, per request), the floor's /stats."""
    if server.name.startswith("floor"):
        url = f"{server.base}/stats/{model}"
    else:
        url = f"{server.base}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=10) as response:
        doc = json.loads(response.read())
    if "model_stats" in doc:
        doc = doc["model_stats"][0]["inference_stats"]["compute_infer"]
    return int(doc["count"]), int(doc["ns"])


def cell(server: Server, work: Workload, conc: int, args: argparse.Namespace) -> dict[str, Any]:
    url = f"{server.base}/v2/models/{work.model}/infer"
    load(url, work, conc, args.warmup, args.load_cpu)
    runs0 = run_time(server, work.model)
    before = Usage.now([server.pgid])
    r = load(url, work, conc, args.duration, args.load_cpu)
    after = Usage.now([server.pgid])
    runs1 = run_time(server, work.model)
    # Mean session.run time per request inside the server during this cell (a batch's time is
    # shared by its requests), to split end-to-end time into model and everything else.
    r["run_us_mean"] = (runs1[1] - runs0[1]) / 1e3 / max(1, runs1[0] - runs0[0])
    r.update(cpu_figures(before, after, server.pgid, r["requests"], args.sut_cpu, [args.load_cpu]))
    return r


def check_reply(server: Server, work: Workload, expected: list[float]) -> None:
    """One request before measuring: 200, and the same probabilities as in-process."""
    headers = {"Content-Type": work.content_type}
    if work.header_length is not None:
        headers["Inference-Header-Content-Length"] = str(work.header_length)
    request = urllib.request.Request(
        f"{server.base}/v2/models/{work.model}/infer",
        data=work.body.read_bytes(),
        headers=headers,
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        doc = json.loads(response.read())
    got = doc["outputs"][0]["data"]
    if len(got) != len(expected) or any(
        abs(a - b) > 1e-5 for a, b in zip(got, expected, strict=True)
    ):
        raise RuntimeError(f"{server.name}/{work.model}: reply differs from in-process run")


def in_process(repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    argv = ["taskset", "-c", args.sut_cpu, PY, str(HERE / "inprocess.py"), "--repo", str(repo)]
    argv += ["--seconds", str(args.inprocess_seconds), "--image-size", str(args.image_size)]
    result: dict[str, Any] = json.loads(run_child(argv, None, timeout=300))
    return result


# ------------------------------------------------------------------ one run
def router_environ(args: argparse.Namespace) -> dict[str, str] | None:
    """With --router-src, run that checkout of the router (e.g. a snapshot of HEAD while the
    working tree is being edited) instead of the installed one."""
    if args.router_src is None:
        return None
    return dict(os.environ, PYTHONPATH=str(args.router_src.resolve()))


Spec = tuple[list[str], tuple[str, ...], dict[str, str] | None]


def server_specs(repo: Path, paths: dict[str, Path], args: argparse.Namespace) -> dict[str, Spec]:
    """name -> (argv, models it serves in the cells, environment)."""
    floor = [PY, str(HERE / "floor_server.py"), "--port", "0"]
    floor += [f"--model={m}={paths[m]}" for m in ("mlp", "image")]
    # The cache off: every request must reach the model (identical bodies would all be hits).
    # The audit trail stays on, as in production, writing into the run's temporary folder.
    config = repo.parent / "router.yaml"
    config.write_text(
        f"models: {{repository: {repo}}}\ncache: {{enabled: false}}\n"
        f"audit: {{path: {repo.parent / 'audit'}}}\n",
        encoding="utf-8",
    )
    serve = ["serve", "--config", str(config), "--port", "0"]
    router = [ROUTER_BIN, *serve] if args.router_src is None else [PY, "-m", "router", *serve]
    specs: dict[str, Spec] = {
        "floor": (floor, ("mlp", "image"), None),
        "router": (router, (*models.MLP_VARIANTS, "image"), router_environ(args)),
    }
    if args.offload_floor:
        specs["floor_offload"] = ([*floor, "--offload"], ("mlp", "image"), None)
    return specs


def run(args: argparse.Namespace, tmp: Path, out_stem: Path) -> dict[str, Any]:
    repo = tmp / "repo"
    paths = models.write_repository(repo, args.image_size)
    workloads = {w.model: w for w in make_workloads(tmp, args.concurrency, args.image_size)}
    specs = server_specs(repo, paths, args)
    cells: list[dict[str, Any]] = []
    inproc: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for rep in range(1, args.repeats + 1):
        measured = in_process(repo, args)
        inproc.append(measured)
        log(
            f"rep {rep} in-process session.run: mlp p50 {measured['mlp']['p50_us']:.1f} µs, "
            f"image p50 {measured['image']['p50_us'] / 1e3:.2f} ms"
        )
        names = list(specs) if rep % 2 else list(reversed(specs))  # alternate to spread drift
        for name in names:
            try:
                cells += measure_server(name, specs[name], rep, measured, workloads, args, out_stem)
            except (RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
                # One broken server or cell must not lose the rest of the run.
                log(f"rep {rep} {name}: FAILED: {exc}")
                failures.append({"rep": rep, "server": name, "error": str(exc)[:2000]})
    return {"cells": cells, "inprocess": inproc, "failures": failures}


def measure_server(
    name: str,
    spec: Spec,
    rep: int,
    measured: dict[str, Any],
    workloads: dict[str, Workload],
    args: argparse.Namespace,
    out_stem: Path,
) -> list[dict[str, Any]]:
    argv, served, env = spec
    log_path = Path(f"{out_stem}.{name}.rep{rep}.log")
    server = Server(name, argv, args.sut_cpu, log_path, env).start()
    cells = []
    try:
        for model in served:
            work = workloads[model]
            check_reply(server, work, measured["image" if model == "image" else "mlp"]["probs"])
            for conc in work.concurrency:
                r = cell(server, work, conc, args)
                r.update(rep=rep, server=name, model=model, data=work.data, conc=conc)
                cells.append(r)
                log(
                    f"rep {rep} {name:13s} {model:19s} c={conc:<3d} "
                    f"{r['rps']:9,.0f} req/s  p50 {r['p50_us'] / 1e3:6.2f} ms  "
                    f"p99 {r['p99_us'] / 1e3:6.2f} ms  cpu {r['cpu_us_per_req']:7.1f} "
                    f"µs/req ({r['cpu_pct']:.0f}%)  other {r['other_on_sut_pct']:.0f}%"
                    f"  err {r['errors']}"
                )
    finally:
        server.stop()
    return cells


def env_info(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    cpu = cpu_model()
    versions = subprocess.run(
        [
            PY,
            "-c",
            "import sys, aiohttp, uvloop, orjson, onnxruntime, numpy, router; "
            "print(sys.version.split()[0], 'aiohttp', aiohttp.__version__, 'uvloop', "
            "uvloop.__version__, 'orjson', orjson.__version__, 'onnxruntime', "
            "onnxruntime.__version__, 'numpy', numpy.__version__, 'router', router.__version__)",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=router_environ(args),
    ).stdout.strip()
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "python": versions,
        "load": "wrk" if WRK else "closed_loop.py (wrk missing)",
        "router": str(args.router_src.resolve()) if args.router_src else ROUTER_BIN,
        "git": git_state(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "image_bytes": (tmp / "image.bin").stat().st_size,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measured cell")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each cell")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", default="1,16,64", help="comma-separated connection counts")
    ap.add_argument("--image-size", type=int, default=models.IMAGE_SIZE)
    ap.add_argument("--inprocess-seconds", type=float, default=1.5)
    ap.add_argument(
        "--offload-floor",
        action="store_true",
        help="add the floor with session.run "
        "on a worker thread (what the thread hand-off alone costs)",
    )
    ap.add_argument(
        "--router-src",
        type=Path,
        help="folder holding the `router` package to "
        "run instead of the installed one (python -m router with PYTHONPATH)",
    )
    ap.add_argument("--sut-cpu", default="0", help="CPU for the server under test")
    ap.add_argument("--load-cpu", default="1", help="CPU for wrk and this script")
    ap.add_argument("--report", type=Path, help="only re-render the report of a results .json")
    args = ap.parse_args(argv)
    args.concurrency = tuple(int(c) for c in args.concurrency.split(","))
    return args


BENCH = Bench(
    name="local_inference",
    tmp_prefix="bench-local-",
    report=report,
    measure=run,
    env_info=env_info,
    env_after_measure=True,  # the env states the size of the image body the run writes
)


def main(argv: list[str] | None = None) -> int:
    return run_bench(BENCH, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
