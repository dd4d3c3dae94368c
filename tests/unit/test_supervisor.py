"""The supervisor's restart rule: quick crashes back off 1, 2, 4 ... 30 s; a long run starts
the back-off again; a worker failing its first start stops the site; worker indices and
admin ports come from the environment."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from router.cli import main
from router.settings import Settings
from router.workers import (
    PORT_ENV,
    WORKER_ENV,
    Slot,
    Supervisor,
    admin_port,
    admin_ports_problem,
    as_worker,
    is_primary,
    supervise,
    worker_index,
)


class Exited:
    """A stand-in for a worker process that has exited with `code`."""

    def __init__(self, code: int) -> None:
        self.returncode = code

    def poll(self) -> int:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        """Gone already: nothing to signal."""


def crash(supervisor: Supervisor, slot: Slot, code: int, ran_s: float, now: float) -> float:
    """Let `slot`'s worker exit after `ran_s`; the delay before its restart."""
    slot.process = Exited(code)  # type: ignore[assignment]
    slot.started = now - ran_s
    assert supervisor._tend(slot, now) is None
    return slot.restart_at - now


def test_quick_crashes_back_off_and_a_long_run_resets() -> None:
    """1, 2, 4 ... capped at 30 s for crashes in a row; after a run of a minute, 1 s again."""
    supervisor = Supervisor(["true"], 1, Settings(), io.StringIO())
    slot = supervisor.slots[0]
    slot.starts = 2  # past the first start
    delays = [crash(supervisor, slot, -9, ran_s=1.0, now=100.0) for _ in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert crash(supervisor, slot, 1, ran_s=61.0, now=200.0) == 1.0


def test_failing_first_start_stops_the_site() -> None:
    """Exit 2 within seconds of the first start: the code is returned, no restart planned."""
    supervisor = Supervisor(["true"], 1, Settings(), io.StringIO())
    slot = supervisor.slots[0]
    slot.starts, slot.started = 1, 10.0
    slot.process = Exited(2)  # type: ignore[assignment]
    assert supervisor._tend(slot, 11.0) == 2


def test_a_configuration_refused_after_a_slow_first_start_stops_the_site() -> None:
    """Exit 2 on the first start after loading took 30 s (a loaded machine, big models) still
    stops the site: restarting cannot mend a configuration serve refuses."""
    supervisor = Supervisor(["true"], 1, Settings(), io.StringIO())
    slot = supervisor.slots[0]
    slot.starts, slot.started = 1, 10.0
    slot.process = Exited(2)  # type: ignore[assignment]
    assert supervisor._tend(slot, 40.0) == 2


def test_a_slow_first_start_crashing_otherwise_is_restarted() -> None:
    """Exit 1 after a first start that ran 30 s: restarted after the back-off, as any crash."""
    supervisor = Supervisor(["true"], 1, Settings(), io.StringIO())
    slot = supervisor.slots[0]
    slot.starts = 1
    assert crash(supervisor, slot, 1, ran_s=30.0, now=50.0) == 1.0


def test_killed_on_first_start_is_restarted() -> None:
    """A worker killed by a signal (not failing by itself) is restarted even at first."""
    supervisor = Supervisor(["true"], 1, Settings(), io.StringIO())
    slot = supervisor.slots[0]
    slot.starts = 1
    assert crash(supervisor, slot, -9, ran_s=1.0, now=50.0) == 1.0


def test_an_index_in_other_digits_is_no_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """`LAYER_ROUTER_WORKER=²` (a digit to str.isdigit, not to int) is no worker index, not a
    ValueError at start."""
    monkeypatch.setenv(WORKER_ENV, "²")
    assert worker_index() is None


def test_index_and_admin_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Alone: no index, primary, the admin port as set; worker 2: its own admin port."""
    monkeypatch.delenv(WORKER_ENV, raising=False)
    assert (worker_index(), is_primary(), admin_port(8002)) == (None, True, 8002)
    monkeypatch.setenv(WORKER_ENV, "2")
    assert (worker_index(), is_primary(), admin_port(8002), admin_port(0)) == (2, False, 8004, 0)


def test_as_worker_takes_the_reserved_port_and_its_admin_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker 1: the supervisor's port from the environment, admin port + 1 (0 stays 0)."""
    monkeypatch.setenv(WORKER_ENV, "1")
    monkeypatch.setenv(PORT_ENV, "41000")
    doc: dict[str, Any] = {"server": {"port": 0}, "admin": {"port": 8002}}
    as_worker(doc)
    assert doc == {"server": {"port": 41000}, "admin": {"port": 8003}}
    doc = {"server": {"port": 0}, "admin": {"port": 0}}
    as_worker(doc)
    assert doc["admin"] == {"port": 0}


@pytest.mark.parametrize(
    ("server", "admin", "reason"),
    [
        ({"port": 8003, "workers": 2}, {"port": 8002}, "take server.port 8003"),
        ({"port": 8000, "workers": 3}, {"port": 65534}, "65534..65536 go past 65535"),
    ],
)
def test_workers_admin_ports_that_cannot_all_be_had_are_refused_up_front(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    server: dict[str, int],
    admin: dict[str, int],
    reason: str,
) -> None:
    """Worker i's admin listener is on admin.port + i: a range that reaches the API's port or
    past 65535 let worker 0 start and load its models, and stopped the site when a later one
    failed (exit 2); the supervisor refuses it before starting any (2), and check too."""
    settings = Settings.model_validate({"server": server, "admin": admin})
    problem = admin_ports_problem(settings)
    assert problem is not None
    assert reason in problem
    out = io.StringIO()
    assert supervise(settings, ["serve"], out=out) == 2
    assert "worker 0 started" not in out.getvalue()
    assert reason in capsys.readouterr().err
    config = tmp_path / "site.yaml"
    config.write_text(f"server: {server}\nadmin: {admin}\n".replace("'", ""))
    assert main(["check", str(config)]) == 2
    assert reason in capsys.readouterr().err


def test_workers_admin_ports_clear_of_the_api_port_pass() -> None:
    """The defaults (API 8000, admin 8002 + i) and any free port (0) are fine."""
    for admin in ({"port": 8002}, {"port": 0}, {"enabled": False}):
        settings = Settings.model_validate({"server": {"workers": 4}, "admin": admin})
        assert admin_ports_problem(settings) is None


class GoneReader(io.StringIO):
    """A stdout whose reader has left: every write fails as a closed pipe does."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_stdout_whose_reader_left_does_not_stop_the_supervisor() -> None:
    """The supervisor's lines to a stdout nobody reads are dropped: a BrokenPipeError there
    (while stopping, say) would leave it before it has waited for its draining workers."""
    supervisor = Supervisor(["true"], 1, Settings(), GoneReader())
    slot = supervisor.slots[0]
    slot.process = Exited(0)  # type: ignore[assignment]
    assert supervisor._stop(None) == 0
