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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import models
from harness import (
    HERE,
    PY,
    ROUTER_BIN,
    WRK,
    Server,
    Usage,
    brackets,
    cpu_figures,
    cpu_model,
    fmt,
    git_state,
    log,
    median,
    prepare_run,
    rerender,
    run_child,
    save_run,
    stop_children_on_exit,
)
from harness import load as closed_loop

CPU_TARGET = 1.25  # router CPU per request <= 1.25 x the floor's (issue 2)
OVERHEAD_TARGET = 0.05  # router overhead <= 5 % of model time for the large input


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


# ------------------------------------------------------------------ report
def per_rep(cells: list[dict[str, Any]], server: str, model: str, conc: int) -> dict[int, Any]:
    return {
        c["rep"]: c
        for c in cells
        if c["server"] == server and c["model"] == model and c["conc"] == conc
    }


def paired(
    cells: list[dict[str, Any]],
    a: tuple[str, str],
    b: tuple[str, str],
    conc: int,
    f: Callable[[dict[str, Any], dict[str, Any]], float],
) -> list[float]:
    """f(a_cell, b_cell) for every repeat that has both."""
    xs, ys = per_rep(cells, *a, conc), per_rep(cells, *b, conc)
    return [f(xs[r], ys[r]) for r in sorted(xs) if r in ys]


def _p50_diff(x: dict[str, Any], y: dict[str, Any]) -> float:
    return float(x["p50_us"] - y["p50_us"])


def _cpu_diff(x: dict[str, Any], y: dict[str, Any]) -> float:
    return float(x["cpu_us_per_req"] - y["cpu_us_per_req"])


def image_overheads(
    cells: list[dict[str, Any]], inproc: list[dict[str, Any]], server: str
) -> dict[str, Any] | None:
    """Time and CPU per request beyond the model, against the in-process run of the same repeat
    and against the run time the server measured during the cell itself."""
    rs = per_rep(cells, server, "image", 1)
    if not rs:
        return None
    reps = sorted(rs)
    model = {r: inproc[r - 1]["image"] for r in reps}
    lat = [rs[r]["p50_us"] - model[r]["p50_us"] for r in reps]
    cpu = [rs[r]["cpu_us_per_req"] - model[r]["cpu_us_per_call"] for r in reps]
    cell_lat = [rs[r]["mean_us"] - rs[r]["run_us_mean"] for r in reps]
    cell_cpu = [rs[r]["cpu_us_per_req"] - rs[r]["run_us_mean"] for r in reps]

    def pct(diffs: list[float], base: list[float]) -> list[float]:
        return [100 * d / b for d, b in zip(diffs, base, strict=True)]

    runs = [rs[r]["run_us_mean"] for r in reps]
    lat_pct = pct(lat, [model[r]["p50_us"] for r in reps])
    cpu_pct = pct(cpu, [model[r]["cpu_us_per_call"] for r in reps])
    cell_lat_pct, cell_cpu_pct = pct(cell_lat, runs), pct(cell_cpu, runs)
    return {
        "latency_us": median(lat),
        "latency_pct": median(lat_pct),
        "latency_pcts": lat_pct,
        "cpu_us": median(cpu),
        "cpu_pct": median(cpu_pct),
        "run_us": median(runs),
        "cell_latency_us": median(cell_lat),
        "cell_latency_pct": median(cell_lat_pct),
        "cell_latency_pcts": cell_lat_pct,
        "cell_cpu_us": median(cell_cpu),
        "cell_cpu_pct": median(cell_cpu_pct),
    }


def report(data: dict[str, Any], args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    cells, inproc = data["cells"], data["inprocess"]
    lines = ["## Local inference: router vs Python floor vs in-process onnxruntime", ""]
    lines += [
        f"router {data['env'].get('router')} at {data['env'].get('git', '?')}; "
        f"{data['env']['cpu']}, server on CPU {args.sut_cpu}, load ({data['env']['load']}) on "
        f"CPU {args.load_cpu}; {args.repeats} repeats x {args.duration:g} s per cell; "
        "medians over repeats, per-repeat values in brackets.",
        "",
        "| server | model | body | conc | req/s | p50 ms | p99 ms | server CPU µs/req "
        "| server CPU % | other on SUT core % | errors |",
        "|---|---|---|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    keys = sorted(
        {(c["server"], c["model"], c["data"], c["conc"]) for c in cells},
        key=lambda k: (["floor", "floor_offload", "router"].index(k[0]), k[1], k[3]),
    )
    for server, model, body, conc in keys:
        rs = list(per_rep(cells, server, model, conc).values())
        rps = [r["rps"] for r in rs]
        cpu = [r["cpu_us_per_req"] for r in rs]
        lines.append(
            f"| {server} | {model} | {body} | {conc} | {fmt(median(rps))} {brackets(rps)} "
            f"| {fmt(median([r['p50_us'] / 1e3 for r in rs]), 3)} "
            f"| {fmt(median([r['p99_us'] / 1e3 for r in rs]), 3)} "
            f"| {fmt(median(cpu), 1)} {brackets(cpu, 1)} "
            f"| {fmt(median([r['cpu_pct'] for r in rs]))} "
            f"| {fmt(median([r['other_on_sut_pct'] for r in rs]))} "
            f"| {sum(r['errors'] for r in rs)} |"
        )
    ip: dict[str, dict[str, float | None]] = {}
    lines += ["", "In-process `session.run` on the SUT core (no server running):", ""]
    lines += ["| model | p50 µs | p99 µs | CPU µs/call |", "|---|---:|---:|---:|"]
    for model in ("mlp", "image"):
        ip[model] = {
            k: median([m[model][k] for m in inproc])
            for k in ("p50_us", "p99_us", "cpu_us_per_call")
        }
        lines.append(
            f"| {model} | {fmt(ip[model]['p50_us'], 1)} | {fmt(ip[model]['p99_us'], 1)} "
            f"| {fmt(ip[model]['cpu_us_per_call'], 1)} |"
        )

    summary: dict[str, Any] = {"inprocess": ip, "mlp": {}, "image": {}}
    lines += ["", "### Ratios (median of per-repeat ratios [per repeat])", ""]

    def cpu_ratio(x: dict[str, Any], y: dict[str, Any]) -> float:
        return float(x["cpu_us_per_req"] / y["cpu_us_per_req"])

    def rps_ratio(x: dict[str, Any], y: dict[str, Any]) -> float:
        return float(x["rps"] / y["rps"])

    mlp_cpu = ip["mlp"]["cpu_us_per_call"] or 0.0
    lines += [
        f"MLP (JSON body), against the floor's MLP cell of the same repeat; target: CPU per "
        f"request <= {CPU_TARGET}x the floor. 'outside run' = server CPU µs/req minus in-process "
        f"session.run CPU ({fmt(mlp_cpu, 1)} µs/call).",
        "",
        "| server[model] | conc | CPU/req vs floor [per repeat] | target | req/s vs floor "
        "| CPU µs/req outside run |",
        "|---|---:|---|---|---:|---:|",
    ]
    variants = [("router", m) for m in models.MLP_VARIANTS]
    if args.offload_floor:
        variants.append(("floor_offload", "mlp"))
    for conc in args.concurrency:
        floor_cpu = median(
            [r["cpu_us_per_req"] for r in per_rep(cells, "floor", "mlp", conc).values()]
        )
        lines.append(f"| floor[mlp] | {conc} | 1 | | 1 | {fmt((floor_cpu or 0.0) - mlp_cpu, 1)} |")
        for server, model in variants:
            ratios = paired(cells, (server, model), ("floor", "mlp"), conc, cpu_ratio)
            if not ratios:
                continue
            m = median(ratios)
            rps = median(paired(cells, (server, model), ("floor", "mlp"), conc, rps_ratio))
            cpu = median(
                [r["cpu_us_per_req"] for r in per_rep(cells, server, model, conc).values()]
            )
            verdict = ""
            if server == "router":
                verdict = "meets" if m is not None and m <= CPU_TARGET else "**misses**"
                summary["mlp"].setdefault(model, {})[conc] = {
                    "cpu_ratio": m,
                    "cpu_ratios": ratios,
                    "rps_ratio": rps,
                    "cpu_us_outside_run": (cpu or 0.0) - mlp_cpu,
                }
            lines.append(
                f"| {server}[{model}] | {conc} | **{fmt(m, 2)}x** {brackets(ratios, 2)} "
                f"| {verdict} | {fmt(rps, 2)}x | {fmt((cpu or 0.0) - mlp_cpu, 1)} |"
            )
    lines.append("")

    model_p50 = ip["image"]["p50_us"] or 0.0
    model_cpu = ip["image"]["cpu_us_per_call"] or 0.0
    lines += [
        f"Large input: {args.image_size}x{args.image_size}x3 FP32 image as a binary tensor "
        f"({data['env']['image_bytes']:,} B body), c=1; in-process session.run p50 "
        f"{fmt(model_p50 / 1e3, 2)} ms, {fmt(model_cpu / 1e3, 2)} ms CPU. Overhead = "
        "end-to-end time minus model time, as % of model time; target for the router "
        f"<= {100 * OVERHEAD_TARGET:.0f}%.",
        "- *vs in-process*: wrk p50 minus the in-process p50 of the same repeat (CPU: server "
        "CPU/req minus in-process CPU/call).",
        "- *same cell*: wrk mean minus the mean session.run time the server itself measured over "
        "the same requests (CPU: server CPU/req minus that run time); immune to the model "
        "running faster or slower inside a server than in the in-process loop.",
        "",
        "| server | p50 vs in-process [per repeat] | CPU vs in-process | run in server "
        "| mean vs same-cell run [per repeat] | CPU vs same-cell run | target |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for server in ("floor", "floor_offload", "router"):
        over = image_overheads(cells, inproc, server)
        if over is None:
            continue
        verdict = ""
        if server == "router":
            a = over["latency_pct"] <= 100 * OVERHEAD_TARGET
            b = over["cell_latency_pct"] <= 100 * OVERHEAD_TARGET
            verdict = "meets" if a and b else ("**misses**" if not (a or b) else "mixed")
        lines.append(
            f"| {server} | {fmt(over['latency_us'])} µs = **{fmt(over['latency_pct'], 1)}%** "
            f"{brackets(over['latency_pcts'], 1)} | {fmt(over['cpu_us'])} µs = "
            f"{fmt(over['cpu_pct'], 1)}% | {fmt(over['run_us'] / 1e3, 2)} ms "
            f"| {fmt(over['cell_latency_us'])} µs = **{fmt(over['cell_latency_pct'], 1)}%** "
            f"{brackets(over['cell_latency_pcts'], 1)} | {fmt(over['cell_cpu_us'])} µs = "
            f"{fmt(over['cell_cpu_pct'], 1)}% | {verdict} |"
        )
        summary["image"][server] = over
    if "router" in summary["image"] and "floor" in summary["image"]:
        # What the router adds on top of the least any Python HTTP server pays for the bytes.
        lat = paired(cells, ("router", "image"), ("floor", "image"), 1, _p50_diff)
        cpu = paired(cells, ("router", "image"), ("floor", "image"), 1, _cpu_diff)
        extra = {
            "latency_us": median(lat),
            "latency_pct": 100 * (median(lat) or 0.0) / model_p50,
            "cpu_us": median(cpu),
            "cpu_pct": 100 * (median(cpu) or 0.0) / model_cpu,
        }
        summary["image"]["router_minus_floor"] = extra
        lines += [
            "",
            f"Router minus floor (same repeat, image c=1): p50 {fmt(extra['latency_us'])} µs = "
            f"{fmt(extra['latency_pct'], 1)}% of model time {brackets(lat)}; CPU/req "
            f"{fmt(extra['cpu_us'])} µs = {fmt(extra['cpu_pct'], 1)}% {brackets(cpu)} "
            f"({'meets' if extra['latency_pct'] <= 100 * OVERHEAD_TARGET else '**misses**'} "
            f"<= {100 * OVERHEAD_TARGET:.0f}% if the floor's cost of moving the bytes is not "
            "counted as router overhead).",
        ]
    if data["failures"]:
        lines += ["", "### Failures", ""]
        lines += [f"- rep {f['rep']} {f['server']}: {f['error']}" for f in data["failures"]]
    lines.append("")
    return "\n".join(lines), summary


def env_info(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        return rerender(args.report, report)
    stem = prepare_run(args, "local_inference")
    if stem is None:
        return 2
    started = time.monotonic()
    with stop_children_on_exit(), tempfile.TemporaryDirectory(prefix="bench-local-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            data = run(args, tmp, stem)
        except KeyboardInterrupt:
            log("interrupted: servers stopped, no report")
            return 130
        data["env"] = env_info(tmp, args)
    return save_run(stem, data, report, args, started)


if __name__ == "__main__":
    sys.exit(main())
