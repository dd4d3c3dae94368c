"""Locust's CSV stats, summed up as JSON and a short Markdown table."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None  # locust writes "N/A" when a column has no data


def read_stats(stats_csv: Path) -> list[dict[str, Any]]:
    with stats_csv.open(newline="") as f:
        return [
            {
                "name": row["Name"],
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": _number(row["Requests/s"]),
                "p50_ms": _number(row["50%"]),
                "p95_ms": _number(row["95%"]),
                "p99_ms": _number(row["99%"]),
                "max_ms": _number(row["Max Response Time"]),
            }
            for row in csv.DictReader(f)
        ]


def summarize(stats_csv: Path, meta: dict[str, Any]) -> dict[str, Any]:
    rows = read_stats(stats_csv)
    total = next((r for r in rows if r["name"] == "Aggregated"), None)
    named = [r for r in rows if r["name"] != "Aggregated"]
    tiers: Counter[str] = Counter()
    for row in named:
        tiers[row["name"].rpartition("@")[2] or "none"] += row["requests"]
    requests = total["requests"] if total else 0
    failures = total["failures"] if total else 0
    return {
        **meta,
        "requests": requests,
        "failures": failures,
        "failure_ratio": failures / requests if requests else None,
        "total": total,
        "by_name": named,
        "served_by_tier": dict(tiers),
    }


def markdown(summary: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    lines = [
        f"# Load test: {summary['scenario']}",
        "",
        f"{summary['users']} users, {summary['duration_s']:.0f} s, against the edge of "
        f"`layer-router demo`; {summary['requests']} requests, {summary['failures']} failures.",
        "",
        "| request @ tier | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in [*summary["by_name"], *([summary["total"]] if summary["total"] else [])]:
        rps = "-" if row["rps"] is None else f"{row['rps']:.1f}"
        lines.append(
            f"| {row['name']} | {row['requests']} | {row['failures']} | {rps} | "
            f"{ms(row['p50_ms'])} | {ms(row['p95_ms'])} | {ms(row['p99_ms'])} |"
        )
    tiers = ", ".join(f"{t}: {n}" for t, n in sorted(summary["served_by_tier"].items()))
    lines += ["", f"Served by tier: {tiers}."]
    if summary.get("outage"):
        start, end = summary["outage"]
        lines.append(f"Regional tier cut from {start:.0f} s to {end:.0f} s into the run.")
    return "\n".join(lines) + "\n"
