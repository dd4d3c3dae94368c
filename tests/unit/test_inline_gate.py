"""router/inference/inline_gate.py: where an idle model's run goes, driven by a fake clock.

`_ask(gate, t)` asks the gate with a clock reading t seconds. Every gate's first question
falls due for a look in the pool, so the tests ask it once at t=0 before the questions they
are about, and most set look_interval_s far out so no other look interferes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router.inference.inline_gate import InlineGate, input_bytes

LIMIT = 1_000_000  # 1 ms
FAR = 1e9  # an interval that never passes within a test


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now
        self.reads = 0

    def time(self) -> float:
        self.reads += 1
        return self.now


def _feeds(size: int) -> dict[str, np.ndarray]:
    return {"x": np.zeros(size, np.uint8)}


def _ask(gate: InlineGate, t: float, size: int = 8) -> bool:
    """Whether `gate` puts a run on `size` bytes on the loop at clock time t."""
    return gate.runs_on_loop(FakeClock(t), _feeds(size))


def _gate(limit: int = LIMIT, **thresholds: Any) -> InlineGate:
    """A gate whose first look in the pool (at t=0) is behind it; no other look falls due."""
    thresholds.setdefault("look_interval_s", FAR)
    gate = InlineGate(limit, **thresholds)
    assert not _ask(gate, 0.0)
    return gate


class TestEstimate:
    def test_unmeasured_model_runs_in_the_pool(self) -> None:
        """Before any run time is known, even a generous limit keeps runs off the loop."""
        gate = _gate(limit=10**9)
        assert not _ask(gate, 1.0)
        assert gate.loop_run_ns() == float("inf")

    def test_fast_measured_model_runs_on_the_loop(self) -> None:
        """Once measured below the limit, an idle model's runs go on the loop."""
        gate = _gate()
        gate.ran_on_loop(10_000, 8)
        assert _ask(gate, 1.0)
        assert _ask(gate, 2.0)

    def test_slow_measured_model_stays_in_the_pool(self) -> None:
        """A model measured at or above the limit keeps running in the pool."""
        gate = _gate()
        gate.ran_on_loop(LIMIT, 8)
        assert not _ask(gate, 1.0)

    def test_limit_zero_never_runs_on_the_loop(self) -> None:
        """A limit of 0 turns inline runs off, however fast the model and whatever is due."""
        gate = InlineGate(0, look_interval_s=FAR)
        gate.ran_on_loop(1, 8)
        gate.ran_in_pool(1, 8)
        assert not any(_ask(gate, t) for t in (0.0, 1.0, 2.0, 100.0))

    def test_clock_is_read_once_per_question_and_never_when_off(self) -> None:
        """An enabled gate reads its clock once per question; a gate with limit 0 never (its
        runner's requests pay nothing for inline runs they cannot have)."""
        clock = FakeClock(1.0)
        assert not InlineGate(0).runs_on_loop(clock, _feeds(8))
        assert clock.reads == 0
        InlineGate(LIMIT).runs_on_loop(clock, _feeds(8))
        assert clock.reads == 1

    def test_one_slow_run_under_the_ceiling_leaves_the_model_on_the_loop(self) -> None:
        """A run slowed once (a preempting process, a collection) among fast ones leaves the
        model on the loop: the estimate is the shortest of the last few runs there."""
        gate = _gate()
        gate.ran_on_loop(10_000, 8)
        gate.ran_on_loop(5_000_000, 8)  # five times the limit, under the ceiling of ten
        assert gate.loop_run_ns() == 10_000
        assert _ask(gate, 1.0)

    def test_one_run_over_the_ceiling_sends_the_model_off_at_once(self) -> None:
        """A run of ten times the limit or more replaces every earlier run on the loop."""
        gate = _gate()
        gate.ran_on_loop(10_000, 8)
        gate.ran_on_loop(10 * LIMIT, 8)
        assert gate.loop_run_ns() == 10 * LIMIT
        assert not _ask(gate, 1.0)

    def test_probe_ceiling_is_a_parameter(self) -> None:
        """probe_ceiling sets how many times the limit a run must take to clear the estimate."""
        gate = _gate(probe_ceiling=3)
        gate.ran_on_loop(10_000, 8)
        gate.ran_on_loop(3 * LIMIT, 8)
        assert gate.loop_run_ns() == 3 * LIMIT

    def test_estimate_keeps_only_the_last_runs(self) -> None:
        """The estimate forgets a fast run once `history` later runs were measured."""
        gate = _gate(history=2)
        gate.ran_on_loop(10_000, 8)
        gate.ran_on_loop(2_000_000, 8)
        assert gate.loop_run_ns() == 10_000
        gate.ran_on_loop(2_000_000, 8)
        assert gate.loop_run_ns() == 2_000_000
        assert not _ask(gate, 1.0)

    def test_default_history_is_five_runs(self) -> None:
        """By default the shortest of the last five runs on the loop is the estimate."""
        gate = InlineGate(LIMIT)
        gate.ran_on_loop(10_000, 8)
        for _ in range(4):
            gate.ran_on_loop(2_000_000, 8)
        assert gate.loop_run_ns() == 10_000
        gate.ran_on_loop(2_000_000, 8)
        assert gate.loop_run_ns() == 2_000_000

    def test_input_far_larger_than_measured_runs_in_the_pool(self) -> None:
        """A model measured fast on a small input (a warm-up with open dimensions set to 1) is
        expected to take as many times longer on an input that many times larger."""
        gate = _gate()
        gate.ran_on_loop(10_000, 8)
        assert _ask(gate, 1.0, 8 * 99)  # 990 µs
        assert not _ask(gate, 2.0, 8 * 100)  # 1 ms

    def test_smaller_input_is_not_expected_faster(self) -> None:
        """An input smaller than the one measured is expected to take as long, not less."""
        gate = _gate()
        gate.ran_on_loop(2_000_000, 8000)
        assert not _ask(gate, 1.0)

    def test_shortest_scaled_run_is_the_estimate(self) -> None:
        """Each run counts scaled to the new input's bytes; the shortest of those decides."""
        gate = _gate()
        gate.ran_on_loop(500_000, 800_000)  # measured on a large input
        gate.ran_on_loop(10_000, 8)  # scaled to 800,000 bytes: 1 s
        assert _ask(gate, 1.0, 800_000)

    def test_runs_in_the_pool_do_not_move_the_estimate(self) -> None:
        """A run in the pool, slowed by the wait for the GIL and the core, leaves a model
        measured fast on the loop there."""
        gate = _gate()
        gate.ran_on_loop(10_000, 8)
        gate.ran_in_pool(50 * LIMIT, 8)
        assert gate.loop_run_ns() == 10_000
        assert _ask(gate, 1.0)


class TestProbe:
    def test_model_sent_off_by_a_spike_is_probed_back_onto_the_loop(self) -> None:
        """One very slow run sends the model to the pool; once a probe falls due it runs on
        the loop again, and the probe's own time replaces the estimate."""
        gate = _gate(probe_interval_s=1.0)
        gate.ran_in_pool(50_000, 8)  # fast in the pool
        gate.ran_on_loop(50 * LIMIT, 8)  # a 50 ms run on the loop
        assert _ask(gate, 0.5)  # the first probe is due at once
        assert gate.loop_run_ns() == float("inf")
        assert not _ask(gate, 1.4)  # measured nothing since: no probe yet
        assert _ask(gate, 1.5)  # a probe interval after the last

    def test_probe_measured_fast_keeps_the_model_on_the_loop(self) -> None:
        """After a probe measured the model fast, its runs stay on the loop between probes."""
        gate = _gate(probe_interval_s=1.0)
        gate.ran_in_pool(50_000, 8)
        gate.ran_on_loop(50 * LIMIT, 8)
        assert _ask(gate, 0.5)
        gate.ran_on_loop(10_000, 8)  # what the probe measured
        assert _ask(gate, 0.6)

    def test_default_probe_interval_is_a_quarter_second(self) -> None:
        """By default a model too slow on the loop is probed at most every 0.25 s."""
        gate = _gate()
        gate.ran_in_pool(50_000, 8)
        assert _ask(gate, 1.0)
        assert not _ask(gate, 1.2)
        assert _ask(gate, 1.25)

    def test_model_slow_in_the_pool_is_never_probed(self) -> None:
        """A model whose runs in the pool take ten times the limit or more is not tried on the
        loop, however often probes fall due: a probe would stall every request."""
        gate = _gate(probe_interval_s=0.0)
        gate.ran_in_pool(10 * LIMIT, 8)
        assert not any(_ask(gate, float(t)) for t in range(1, 10))
        gate.ran_in_pool(10 * LIMIT - 1, 8)
        assert _ask(gate, 10.0)

    def test_pool_runs_are_scaled_to_the_input(self) -> None:
        """A run in the pool counts scaled to the new input's bytes, never scaled down."""
        gate = _gate(probe_interval_s=0.0)
        gate.ran_in_pool(LIMIT, 80)
        assert not _ask(gate, 1.0, 800)  # ten times the bytes: 10 ms
        assert _ask(gate, 2.0)  # a tenth of them: still 1 ms
        gate.ran_in_pool(2 * LIMIT, 80)
        assert not _ask(gate, 3.0, 400)  # five times: 10 ms

    def test_unmeasured_anywhere_is_never_probed(self) -> None:
        """A model with no runs in the pool is not probed: nothing bounds its run."""
        gate = _gate(probe_interval_s=0.0)
        gate.ran_on_loop(50 * LIMIT, 8)
        assert not _ask(gate, 1.0)


class TestCompany:
    def test_a_shared_hand_off_keeps_runs_in_the_pool(self) -> None:
        """Once requests shared a hand-off, a fast model's runs stay in the pool for the
        company window, where queued runs share hand-offs."""
        gate = _gate(company_window_s=0.5)
        gate.ran_on_loop(10_000, 8)
        gate.hand_off_shared(1.0)
        assert not _ask(gate, 1.0)
        assert not _ask(gate, 1.49)
        assert _ask(gate, 1.5)

    def test_one_run_goes_to_the_pool_every_look_interval(self) -> None:
        """A fast model on the loop sends one run to the pool every look interval, to see
        whether requests arrive together there."""
        gate = InlineGate(LIMIT, look_interval_s=1.0)
        gate.ran_on_loop(10_000, 8)
        assert [_ask(gate, t) for t in (0.0, 0.5, 0.99, 1.0, 1.5, 2.0)] == [
            False,
            True,
            True,
            False,
            True,
            False,
        ]

    def test_default_look_interval_is_a_quarter_second(self) -> None:
        """By default a fast model on the loop sends one run every 0.25 s to the pool."""
        gate = InlineGate(LIMIT)
        gate.ran_on_loop(10_000, 8)
        assert [_ask(gate, t) for t in (1.0, 1.01, 1.24, 1.25, 1.26)] == [
            False,
            True,
            True,
            False,
            True,
        ]

    def test_model_returns_to_the_loop_once_requests_come_alone(self) -> None:
        """With the default thresholds, a fast model whose requests stop arriving together
        is back on the loop after the company window and one look in the pool."""
        gate = InlineGate(LIMIT)
        gate.ran_on_loop(10_000, 8)
        gate.hand_off_shared(10.0)
        assert not _ask(gate, 10.24)  # still in company
        assert not _ask(gate, 10.25)  # a look in the pool
        assert _ask(gate, 10.26)

    def test_no_look_is_spent_while_in_company(self) -> None:
        """A run kept in the pool by company does not use up the next look."""
        gate = InlineGate(LIMIT, look_interval_s=1.0, company_window_s=1.0)
        gate.ran_on_loop(10_000, 8)
        gate.hand_off_shared(0.0)
        assert not _ask(gate, 0.5)
        assert not _ask(gate, 1.0)  # the look: the first due
        assert _ask(gate, 1.1)


class TestExpectedRun:
    def test_pool_runs_tell_best_when_there_were_any(self) -> None:
        """How long a run takes, for grouping hand-offs: the pool's runs once there were
        any, before that the loop's estimate, infinite while nothing was measured."""
        gate = InlineGate(LIMIT)
        assert gate.expected_run_ns() == float("inf")
        gate.ran_on_loop(3_000, 8)
        assert gate.expected_run_ns() == 3_000
        gate.ran_in_pool(50_000_000, 8)
        assert gate.expected_run_ns() == 50_000_000


def test_input_bytes_counts_every_input_and_is_never_zero() -> None:
    """A run's input bytes are those of all its inputs, at least 1 so they can divide."""
    assert input_bytes({"x": np.zeros(3, np.float32), "y": np.zeros(2, np.int64)}) == 28
    assert input_bytes({"x": np.zeros(0, np.float32)}) == 1
