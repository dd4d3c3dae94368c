"""bench/local_inference.py's Markdown report and summary: the cells, in-process run costs,
CPU ratios against the floor and the large input's overhead beyond the model."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import models
from harness import brackets, fmt, median

CPU_TARGET = 1.25  # router CPU per request <= 1.25 x the floor's (issue 2)
OVERHEAD_TARGET = 0.05  # router overhead <= 5 % of model time for the large input


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
