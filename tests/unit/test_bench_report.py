"""bench/report.py renders its Markdown report and PNG plots from saved results, and says so
plainly when a benchmark was not run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def cell(target: str, conc: int, rps: float, p50_ms: float, cpu: float) -> dict[str, object]:
    return {
        "target": target,
        "conc": conc,
        "rep": 1,
        "rps": rps,
        "p50_us": p50_ms * 1e3,
        "p99_us": p50_ms * 3e3,
        "cpu_us_per_req": cpu,
        "other_on_sut_pct": 3.0,
    }


FIXTURE = {
    "started": "2026-11-27 12:00",
    "env": {"git": "abc1234", "cpu": "test cpu"},
    "settings": "duration=1.0, repeats=1",
    "benches": {
        "forwarding": {
            "status": "ok",
            "rows": [
                cell("router", 1, 2000, 0.4, 210),
                cell("naive", 1, 2500, 0.3, 190),
                cell("router", 16, 4500, 3.5, 200),
                cell("naive", 16, 5000, 3.1, 185),
            ],
            "streams": [{"target": "router", "ttft_p50_us": 900, "ttft_p99_us": 2100}],
        },
        "litellm": {"status": "not run", "note": "LiteLLM is not installed on this machine"},
        "cache_hit": {"status": "failed", "note": "exit code 1; see cache_hit.log"},
        "local_inference": {"status": "ok", "rows": [cell("router mlp", 1, 3000, 0.3, 120)]},
        "redaction": {"status": "ok", "text": "| entity | n |\n|---|---|\n| EMAIL | 12 |"},
    },
}


def test_report_renders_from_saved_results(tmp_path: Path) -> None:
    """Tables, plots and the state of every benchmark appear in the rendered report."""
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(FIXTURE))
    done = subprocess.run(
        [sys.executable, str(BENCH / "report.py"), "--from-json", str(saved)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "report.md").read_text()
    assert "| router | 16 | 4,500 | 3.500 | 10.500 | 200.0 | 3 | 1 |" in report
    assert "![" in report
    assert "LiteLLM: **NOT RUN**: LiteLLM is not installed" in report
    assert "**FAILED**: exit code 1" in report
    assert "| EMAIL | 12 |" in report
    for png in ("forwarding.png", "local_inference.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "cache_hit.png").exists()


def test_litellm_rows_join_the_forwarding_table(tmp_path: Path) -> None:
    """When LiteLLM ran, it appears in the forwarding table next to the router."""
    fixture = json.loads(json.dumps(FIXTURE))
    fixture["benches"]["litellm"] = {"status": "ok", "rows": [cell("litellm", 1, 53, 18.7, 7641)]}
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(fixture))
    subprocess.run(
        [sys.executable, str(BENCH / "report.py"), "--from-json", str(saved)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    report = (tmp_path / "report.md").read_text()
    assert "| litellm | 1 | 53 | 18.700 | 56.100 | 7,641.0 | 3 | 1 |" in report
    assert "NOT RUN" not in report.split("## Cache hit")[0]
