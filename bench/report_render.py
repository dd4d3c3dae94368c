"""Render bench/report.py's collected results: a Markdown report with PNG plots (matplotlib)
of throughput, latency and CPU per request, each target side by side per concurrency."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from harness import fmt

# section key -> (title, what the targets are)
SECTIONS = {
    "forwarding": (
        "Forwarding: router vs direct, nginx, a naive aiohttp proxy and LiteLLM",
        "One hop to a mock OpenAI upstream (chat.completion JSON). `direct` is the upstream "
        "alone; LiteLLM is measured by the peer harness against its nginx mock upstream.",
    ),
    "cache_hit": (
        "Cache hit, and the audit trail's overhead",
        "The router answering from its response cache (audit on and off) vs a Python floor, bare "
        "and with the headers every answer of the router carries (floor_headers).",
    ),
    "local_inference": (
        "Local inference",
        "KServe v2 JSON -> onnxruntime through the router vs a minimal aiohttp floor.",
    ),
}


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (target, conc): the median of each figure over the repeats."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["target"], row["conc"])].append(row)
    merged = []
    for (target, conc), group in groups.items():
        row: dict[str, Any] = {"target": target, "conc": conc, "repeats": len(group)}
        for key in ("rps", "p50_us", "p99_us", "cpu_us_per_req", "other_on_sut_pct"):
            values = [g[key] for g in group if g.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        merged.append(row)
    return sorted(merged, key=lambda r: (r["conc"], r["target"]))


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| target | conc | req/s | p50 ms | p99 ms | CPU µs/req | other load on its core % "
        "| repeats |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p50 = None if r["p50_us"] is None else r["p50_us"] / 1e3
        p99 = None if r["p99_us"] is None else r["p99_us"] / 1e3
        lines.append(
            f"| {r['target']} | {r['conc']} | {fmt(r['rps'])} | {fmt(p50, 3)} | {fmt(p99, 3)} "
            f"| {fmt(r['cpu_us_per_req'], 1)} | {fmt(r['other_on_sut_pct'])} | {r['repeats']} |"
        )
    return lines


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """Three panels, one bar per target in each concurrency group: req/s, p50 (p99 as a
    lighter bar behind it), CPU µs per request."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    targets = sorted({r["target"] for r in rows})
    concs = sorted({r["conc"] for r in rows})
    cell = {(r["target"], r["conc"]): r for r in rows}
    width = 0.8 / max(1, len(targets))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = (("rps", "throughput (req/s)", 1.0), ("p50_us", "latency p50 / p99 (ms)", 1e-3))
    panels += (("cpu_us_per_req", "server CPU per request (µs)", 1.0),)
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        for i, target in enumerate(targets):
            xs = [c + (i - (len(targets) - 1) / 2) * width for c in range(len(concs))]
            value = [_get(cell, target, c, key, scale) for c in concs]
            if key == "p50_us":
                p99 = [_get(cell, target, c, "p99_us", scale) for c in concs]
                ax.bar(xs, p99, width, color=f"C{i}", alpha=0.3)
            ax.bar(xs, value, width, color=f"C{i}", label=target)
        ax.set_xticks(range(len(concs)), [f"c={c}" for c in concs])
        ax.set_title(label)
        if key != "rps":
            ax.set_yscale("log")
    axes[0].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _get(cell: dict[tuple[str, int], Any], target: str, conc: int, key: str, scale: float) -> float:
    row = cell.get((target, conc))
    value = None if row is None else row.get(key)
    return 0.0 if value is None else float(value) * scale


def render(data: dict[str, Any], out: Path) -> str:
    """The report's Markdown; the plots are written next to it in `out`."""
    lines = [
        "# layer-router benchmark report",
        "",
        f"{data['started']}, {data['env'].get('git', '?')}, {data['env'].get('cpu', '?')}.",
        f"Settings: {data['settings']}. Short runs on a shared machine are noisy: compare "
        "targets within one run, not across runs; CPU µs per request is the steadiest figure, "
        "and a cell with much other load on its core was disturbed.",
    ]
    for key, (title, what) in SECTIONS.items():
        section = data["benches"].get(key, {"status": "not run", "note": "skipped"})
        lines += ["", f"## {title}", "", what, ""]
        lines += _status(section)
        raw = list(section.get("rows", []))
        if key == "forwarding":  # LiteLLM is a peer of this hop, measured by another harness
            raw += data["benches"].get("litellm", {}).get("rows", [])
        rows = medians(raw)
        if rows:
            png = f"{key}.png"
            plot(rows, title, out / png)
            lines += [*table(rows), "", f"![{title}]({png})"]
        if key == "forwarding":
            lines += _forwarding_extras(data["benches"])
    redaction = data["benches"].get("redaction", {"status": "not run", "note": "skipped"})
    lines += ["", "## Redaction: detection quality, ours vs Presidio", "", *_status(redaction)]
    if redaction.get("text"):
        # Its own headings sit below this section's.
        text = redaction["text"].strip().replace("\n# ", "\n### ")
        lines += [text[2:] if text.startswith("# ") else text]
    return "\n".join(lines) + "\n"


def _status(section: dict[str, Any]) -> list[str]:
    if section["status"] == "ok":
        return [f"_{section['note']}_", ""] if section.get("note") else []
    return [f"**{section['status'].upper()}**: {section.get('note', '')}", ""]


def _forwarding_extras(benches: dict[str, Any]) -> list[str]:
    lines = []
    litellm = benches.get("litellm", {"status": "not run", "note": "skipped"})
    if litellm["status"] != "ok":
        lines += ["", f"LiteLLM: **{litellm['status'].upper()}**: {litellm.get('note', '')}"]
    streams = benches.get("forwarding", {}).get("streams", [])
    if streams:
        lines += ["", "Streaming: time to first SSE event (median over repeats)", ""]
        lines += ["| target | TTFT p50 ms | TTFT p99 ms |", "|---|---:|---:|"]
        by_target: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for s in streams:
            by_target[s["target"]].append(s)
        for target, group in sorted(by_target.items()):
            p50 = statistics.median(s["ttft_p50_us"] for s in group) / 1e3
            p99 = statistics.median(s["ttft_p99_us"] for s in group) / 1e3
            lines.append(f"| {target} | {p50:.3f} | {p99:.3f} |")
    return lines
