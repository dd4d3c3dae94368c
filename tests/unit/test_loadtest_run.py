"""The load-test runner's command line."""

from __future__ import annotations

import pytest

from loadtest.run import parse_args


@pytest.mark.parametrize("text", ["0", "0s", "0.5", "0m"])
def test_a_duration_under_a_second_is_refused(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Locust's `-t 0s` means no limit: such a duration is an argparse error, not an endless run."""
    with pytest.raises(SystemExit) as info:
        parse_args(["--duration", text])
    assert info.value.code == 2
    assert "--duration" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "expected"), [("1", 1.0), ("20s", 20.0), ("1m30s", 90.0)])
def test_durations_of_a_second_or_more_are_taken(text: str, expected: float) -> None:
    """Seconds, minutes and a bare number are read as before."""
    assert parse_args(["--duration", text]).duration == expected
