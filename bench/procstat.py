"""What the benchmarks read from /proc: CPU ticks of process groups (servers started in their
own session) and of each core, taken as `Usage` snapshots and turned into per-request figures
by `cpu_figures`, and the CPU model for the report's environment.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from `state` on


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def group_cpu_ticks(pgid: int) -> int:
    """utime + stime of every process in the group (each covers all of its threads)."""
    total = 0
    for pid in group_members(pgid):
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total


def core_ticks() -> dict[str, tuple[int, int]]:
    """Per CPU from /proc/stat: (busy incl. irq/softirq, total) jiffies."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *vals = line.split()
            v = [int(x) for x in vals[:8]]
            out[name[3:]] = (v[0] + v[1] + v[2] + v[5] + v[6], sum(v))
    return out


@dataclass(frozen=True)
class Usage:
    """CPU ticks of some process groups and of every core, at one moment."""

    groups: dict[int, int]
    cores: dict[str, tuple[int, int]]
    at: float

    @classmethod
    def now(cls, pgids: Iterable[int]) -> Usage:
        return cls({g: group_cpu_ticks(g) for g in pgids}, core_ticks(), time.monotonic())


def cpu_figures(
    before: Usage, after: Usage, pgid: int, requests: int, sut_cpu: str, cpus: Iterable[str]
) -> dict[str, Any]:
    """Server CPU per request and % of one core for `pgid`, each core's busy %, and the busy
    time on the SUT core not charged to that server (neighbours, softirq, the harness)."""
    wall = after.at - before.at
    cpu_s = (after.groups[pgid] - before.groups[pgid]) / CLK
    busy = {}
    for c in set(cpus) | {sut_cpu}:
        d_busy = after.cores[c][0] - before.cores[c][0]
        d_total = max(1, after.cores[c][1] - before.cores[c][1])
        busy[c] = 100 * d_busy / d_total
    cpu_pct = 100 * cpu_s / wall
    return {
        "cpu_us_per_req": cpu_s * 1e6 / max(1, requests),
        "cpu_pct": cpu_pct,
        "core_busy_pct": busy,
        "other_on_sut_pct": max(0.0, busy[sut_cpu] - cpu_pct),
    }


def cpu_model() -> str:
    return next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
