"""The load-test runner's small parts: durations and the summary of locust's CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loadtest.run import seconds
from loadtest.summary import markdown, summarize

STATS = """Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,\
Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,\
90%,95%,98%,99%,99.9%,99.99%,100%
POST,chat @central,90,1,15,16,3,60,340,4.5,0.05,15,17,18,19,22,30,40,48,60,60,60
POST,infer local @edge,110,0,11,12,2,50,200,5.5,0,11,12,13,14,20,28,35,42,50,50,50
,Aggregated,200,1,13,14,2,60,265,10.0,0.05,13,14,15,16,21,29,38,45,60,60,60
"""


@pytest.mark.parametrize(
    ("text", "expected"), [("20s", 20.0), ("2m", 120.0), ("1m30s", 90.0), ("45", 45.0)]
)
def test_durations(text: str, expected: float) -> None:
    """Locust-style durations become seconds."""
    assert seconds(text) == expected


def test_bad_duration_rejected() -> None:
    """A duration with no number is an argparse error, not a zero-second run."""
    with pytest.raises(argparse.ArgumentTypeError):
        seconds("soon")


def test_summary_counts_tiers(tmp_path: Path) -> None:
    """Requests are summed per answering tier; the aggregate row gives the totals."""
    stats = tmp_path / "locust_stats.csv"
    stats.write_text(STATS)
    meta = {"scenario": "mix", "users": 5, "duration_s": 20.0, "outage": [7.0, 13.0]}
    summary = summarize(stats, meta)
    assert summary["served_by_tier"] == {"central": 90, "edge": 110}
    assert (summary["requests"], summary["failures"]) == (200, 1)
    assert summary["failure_ratio"] == pytest.approx(0.005)
    text = markdown(summary)
    assert "| chat @central | 90 | 1 | 4.5 | 15 | 30 | 48 |" in text
    assert "cut from 7 s to 13 s" in text
