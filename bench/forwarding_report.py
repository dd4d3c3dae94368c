"""bench/forwarding.py's Markdown report and summary: tables, per-repeat ratios, the targets."""

from __future__ import annotations

import argparse
import json
from typing import Any

from forwarding_targets import TARGETS
from harness import brackets, fmt, median

CPU_TARGET = 1.5  # router CPU per request <= 1.5 x the naive proxy's (issue 3); aim: parity
ADDED_P50_TARGET_US = 500.0  # router p50 minus direct p50 at c=1
TTFT_TARGET_US = 1000.0  # router time to first SSE event minus direct's, p50


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
