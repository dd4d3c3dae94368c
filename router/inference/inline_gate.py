"""Whether an idle model's next run happens on the event loop or in the inference pool.

Handing a run to a thread costs two context switches and a loop wake-up (70-80 µs of CPU),
more than a tiny model's run; but on the loop a run stalls every other request, and requests
that arrive together cannot share a hand-off there (README, "Inline runs"). The gate weighs
the two from what its runner tells it about past runs.

Time comes in with each call, not at construction: the runner's clock is its event loop,
known only at its first request (after the warm-up was measured). The question takes the
clock and reads it only once an enabled gate needs the time; a note takes the reading the
runner's hand-off code also used. A test drives the gate with a fake clock and plain numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Protocol

import numpy as np

_NEVER = float("-inf")
_UNKNOWN = float("inf")


class Clock(Protocol):
    """Seconds on a monotonic clock: an asyncio event loop is one."""

    def time(self) -> float: ...


def input_bytes(feeds: Mapping[str, np.ndarray]) -> int:
    """The bytes a run is fed (at least 1, so they can divide)."""
    return max(1, sum(a.nbytes for a in feeds.values()))


class InlineGate:
    """Per model: where its runs go while it is idle, and what a run is expected to take.

    limit_ns: runs expected shorter go on the loop; 0 never.
    history: the estimate is the shortest of this many last runs on the loop. A run can only
      be slowed down (by a preempting process, a collection, cold caches), never sped up, so
      a single slow run does not send a model off the loop; one over the probe ceiling does.
    probe_interval_s, probe_ceiling: a model sent off the loop by a slow run (often its first
      run on a thread) is tried on the loop again at most this often, while its runs in the
      pool stay under probe_ceiling times the limit: the worst a probe can stall the loop is
      then bounded and rare.
    company_window_s, look_interval_s: short runs stay on the loop only while nothing shows
      other requests about. On the loop a request runs from start to end, so requests
      arriving together cannot be seen there; in the pool they queue during a run and share
      the next hand-off, and the model's weights stay in that thread's caches (on the loop
      each run finds them evicted by the requests' own work: a 7 µs MLP takes 50). So one run
      goes to the pool every look_interval_s, to look, and runs stay there for
      company_window_s after a hand-off was last shared.
    """

    __slots__ = (
        "_ceiling_ns",
        "_company_window_s",
        "_limit_ns",
        "_look_interval_s",
        "_looked",
        "_loop_runs",
        "_off_loop_bytes",
        "_off_loop_ns",
        "_probe_interval_s",
        "_probed",
        "_shared",
    )

    def __init__(
        self,
        limit_ns: int,
        *,
        history: int = 5,
        probe_interval_s: float = 0.25,
        probe_ceiling: int = 10,
        company_window_s: float = 0.25,
        look_interval_s: float = 0.25,
    ) -> None:
        self._limit_ns = limit_ns
        self._ceiling_ns = probe_ceiling * limit_ns
        self._probe_interval_s = probe_interval_s
        self._company_window_s = company_window_s
        self._look_interval_s = look_interval_s
        # (ns, input bytes) of runs on the loop, newest last
        self._loop_runs: deque[tuple[float, int]] = deque(maxlen=history)
        self._off_loop_ns = _UNKNOWN  # the last run in the pool, per request
        self._off_loop_bytes = 1  # the input bytes of that run, per request
        self._probed = _NEVER  # clock time of the last probe on the loop
        self._shared = _NEVER  # clock time of the last hand-off of several requests
        self._looked = _NEVER  # clock time of the last run sent to the pool to look

    def runs_on_loop(self, clock: Clock, feeds: Mapping[str, np.ndarray]) -> bool:
        """Whether an idle model's next run, on `feeds`, goes on the loop: it is short, and
        requests do not arrive together. A run sent to the pool to look, or kept on the loop
        as a probe, is noted as such. (Feeds, not bytes: they are counted only when needed.)"""
        limit = self._limit_ns
        if not limit:
            return False
        now = clock.time()
        if now - self._shared < self._company_window_s:
            return False
        if now - self._looked >= self._look_interval_s:
            self._looked = now
            return False
        size = input_bytes(feeds)
        return self._expected_ns(size) < limit or self._probe_now(now, size)

    def ran_on_loop(self, run_ns: float, size: int) -> None:
        """Note one run of `run_ns` on `size` input bytes, measured where nothing else
        competed for the GIL (the warm-up, a run on the loop): the estimate that gates."""
        if run_ns >= self._ceiling_ns:
            self._loop_runs.clear()
        self._loop_runs.append((run_ns, size))

    def ran_in_pool(self, run_ns: float, size: int) -> None:
        """Note the last run in the pool: `run_ns` and `size` input bytes per request."""
        self._off_loop_ns = run_ns
        self._off_loop_bytes = size

    def hand_off_shared(self, now: float) -> None:
        """Note that several requests shared one hand-off to the pool at `now` (clock time)."""
        self._shared = now

    def loop_run_ns(self) -> float:
        """What a run on the loop is expected to take (ns); infinite until measured."""
        return min((ns for ns, _ in self._loop_runs), default=_UNKNOWN)

    def expected_run_ns(self) -> float:
        """What a run is expected to take (ns): runs in the pool, when there were any, tell
        best; on the loop a model may have run only at its warm-up (open dimensions set to
        1), or never under load."""
        pooled = self._off_loop_ns
        return pooled if pooled < _UNKNOWN else self.loop_run_ns()

    def _expected_ns(self, size: int) -> float:
        """What a run on the loop with `size` bytes of input is expected to take (ns): a model
        with open dimensions (measured at the warm-up with them set to 1) may be sent an input
        many times larger than those measured, whose run takes about as many times longer."""
        return min((ns * max(1.0, size / seen) for ns, seen in self._loop_runs), default=_UNKNOWN)

    def _probe_now(self, now: float, size: int) -> bool:
        """Whether to try a model that was too slow on the loop once more. Runs in the pool
        do not move the estimate: there a run's time also holds its wait for the GIL and the
        core, which the loop's own work adds (a 7 µs MLP measured 40-60 µs), so a model sent
        off the loop once would never come back."""
        off_loop_ns = self._off_loop_ns * max(1.0, size / self._off_loop_bytes)
        if off_loop_ns >= self._ceiling_ns:
            return False
        if now - self._probed < self._probe_interval_s:
            return False
        self._probed = now
        self._loop_runs.clear()  # the probe's own time replaces the estimate
        return True
