"""The locust runner, unattended: a 20-second outage scenario against a real demo topology
produces locust's CSV and HTML report and a summary, and stops everything it started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loadtest.topology import ROOT, child_env

RUN_TIMEOUT_S = 240.0
RUN = [sys.executable, "-m", "loadtest.run"]


def test_outage_smoke_writes_reports(tmp_path: Path) -> None:
    """20 s of mixed traffic with the regional tier cut mid-run: reports written, few failures,
    answers from the edge and central, the cut and the restore both happened."""
    out = tmp_path / "run"
    done = subprocess.run(
        [*RUN, "--scenario", "outage", "--duration", "20s", "--users", "5", "--out", str(out)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("locust_stats.csv", "locust_failures.csv", "report.html", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] > 100
    assert summary["failure_ratio"] <= 0.05
    assert {"edge", "central"} <= set(summary["served_by_tier"])
    log = (out / "locust.log").read_text()
    assert "cut regional" in log
    assert "restore regional" in log
    assert "every tier terminated" in (out / "demo" / "demo.log").read_text()
