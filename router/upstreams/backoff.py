"""When to try an upstream again: its own word (`x-should-retry`, `retry-after-ms`,
`Retry-After`), else a jittered exponential back-off, and never past the request's deadline."""

from __future__ import annotations

import asyncio
import email.utils
import re
import time

from tenacity import RetryCallState, wait_random_exponential

from router.errors import UpstreamStatus


def should_retry(raw: str | None) -> bool | None:
    """An OpenAI-style upstream's `x-should-retry` (true|false), else None."""
    value = raw.strip().lower() if raw else ""
    return True if value == "true" else False if value == "false" else None


# ASCII only: str.isdigit() and float() also take "²" (which float() then refuses, a crash),
# other scripts' digits and "1_000", none of them a number in an HTTP header.
_SECONDS = re.compile(r"[0-9]+", re.ASCII)
_MILLISECONDS = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def retry_after_ms(raw: str | None) -> float | None:
    """OpenAI's `retry-after-ms` (milliseconds, may be fractional), in seconds."""
    if raw is None or _MILLISECONDS.fullmatch(raw.strip()) is None:
        return None
    value = float(raw)
    return value / 1000 if value < 86_400_000 else None


def retry_after(raw: str | None) -> float | None:
    if raw is None:
        return None
    if _SECONDS.fullmatch(raw.strip()):
        return float(raw.strip())
    try:
        # A year of twenty digits overflows: an upstream's garbage, not our crash.
        at = email.utils.parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return max(0.0, at - time.time())


class Wait:
    """Jittered exponential back-off, or the upstream's Retry-After when it sent one; never
    past the deadline (a wait that reaches it ends the retries: `out_of_time`)."""

    def __init__(self, base: float, cap: float, deadline: float, loop: asyncio.AbstractEventLoop):
        self._jitter = wait_random_exponential(multiplier=base, max=cap)
        self._deadline = deadline
        self._loop = loop

    def _backoff(self, attempts: int) -> float:
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]  # only reads the count
        state.attempt_number = attempts
        return float(self._jitter(state))

    def __call__(self, state: RetryCallState) -> float:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        # tenacity counts from the first retry; the bare first try came before it.
        return self.after(error, state.attempt_number + 1)

    def after(self, error: BaseException | None, attempts: int) -> float:
        """How long to wait after `attempts` tries, the last of which failed with `error`."""
        if isinstance(error, UpstreamStatus) and error.retry_after is not None:
            delay = error.retry_after
        else:
            delay = self._backoff(attempts)
        return max(0.0, min(delay, self._deadline - self._loop.time()))
