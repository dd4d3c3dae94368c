"""A hand-off's runs stopped at their deadline: for models whose work grows with their inputs'
values (value_cost.py), a run can take as long as a request asks, holding a pool thread."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RunWatch:
    options: Any  # onnxruntime.RunOptions, passed to every run of the hand-off
    alarm: asyncio.TimerHandle  # sets options.terminate; cancelled once the runs are back

    @classmethod
    def until(cls, loop: asyncio.AbstractEventLoop, deadline: float) -> RunWatch:
        """RunOptions told to terminate once `deadline` (the loop's clock) has passed."""
        import onnxruntime as ort  # loaded already: the session came from it

        options = ort.RunOptions()
        return cls(options, loop.call_at(deadline, setattr, options, "terminate", True))
