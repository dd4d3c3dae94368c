"""Uploading the spool: batches go to the collector when the link is up, rate-limited, with
backoff on failure.

Delivery is at-least-once: a record is deleted only after the collector acknowledged its key,
so a crash or a lost answer means it is sent again and the collector's de-duplication by key
makes the second copy harmless. A record whose TTL has passed is never sent: the spool purges
it (counted as expired) and the drainer re-checks expiry just before each send, since the
rate limiter may have held the batch for a while.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router.spool.store import Record, Spool
from router.spool.wire import (
    NDJSON,
    CollectorRefused,
    DeliveryFailed,
    decode_accepted,
    encode_batch,
)
from router.spool.worker import WorkerClosed

log = logging.getLogger(__name__)

# Uploads a batch; the keys the collector acknowledged (a subset of the batch's).
Send = Callable[[list[Record]], Awaitable[set[str]]]
# POSTs `body` with `headers` to `url`; the answer's status and body. It must bound its own
# time (the drainer waits for it). The router passes its own upstream client here, so TLS,
# timeouts and error mapping stay in one place.
Post = Callable[[str, bytes, Mapping[str, str]], Awaitable[tuple[int, bytes]]]


def http_sender(post: Post, url: str, headers: Mapping[str, str] | None = None) -> Send:
    """A `Send` that uploads batches as JSON lines to a collector at `url`, with `headers`
    (the site's name and upload key) on every request."""
    sent = {**(headers or {}), "Content-Type": NDJSON}

    async def send(records: list[Record]) -> set[str]:
        status, body = await post(url, encode_batch(records), sent)
        if status in (401, 403):
            raise CollectorRefused(f"the collector refused this site's credentials ({status})")
        if status != 200:
            raise DeliveryFailed(f"the collector answered {status}")
        return decode_accepted(body, (record.key for record in records))

    return send


class TokenBucket:
    """Records per second with a burst of `burst`; `reserve(n)` takes n tokens at once and says
    how long to wait before using them (reservations may go into debt, paid back by waiting)."""

    def __init__(
        self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def reserve(self, n: int) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


@dataclass
class DrainStats:
    batches: int = 0  # acknowledged uploads
    delivered: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    skipped_expired: int = 0  # expired while held by the rate limiter, not sent
    last_failure: str = ""  # the error's type: never its text, which could quote a reply
    last_batch_at: float | None = None  # the drainer's clock at the last acknowledged upload

    def state(self, online: bool) -> str:
        """How uploads go now: waiting for the link (offline), refused (the collector turns
        this site's credentials away), failing (anything else), or ok."""
        if not online:
            return "offline"
        if self.consecutive_failures == 0:
            return "ok"
        return "refused" if self.last_failure == CollectorRefused.__name__ else "failing"


class Drainer:
    """Moves records from a spool to a collector; `run()` until cancelled or the spool closes."""

    def __init__(
        self,
        spool: Spool,
        send: Send,
        *,
        rate_per_s: float,
        batch_size: int,
        online: Callable[[], bool] = lambda: True,
        idle_s: float = 1.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._spool = spool
        self._send = send
        self._batch_size = batch_size
        self._online = online
        self._idle_s = idle_s
        self._backoff = (backoff_base_s, backoff_max_s)
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self.bucket = TokenBucket(rate_per_s, max(1, batch_size), clock)
        self.stats = DrainStats()

    def status(self) -> dict[str, Any]:
        """The uploads as /status shows them (counted since start)."""
        stats = self.stats
        last = stats.last_batch_at
        return {
            "state": stats.state(self._online()),
            "batches": stats.batches,
            "delivered": stats.delivered,
            "failures": stats.failures,
            "consecutive_failures": stats.consecutive_failures,
            "last_failure": stats.last_failure or None,
            "last_batch_age_s": None if last is None else round(self._clock() - last, 3),
        }

    async def run(self) -> None:
        while True:
            try:
                pause = await self.step()
            except WorkerClosed:
                return
            if pause > 0:
                await self.pause(pause)

    async def pause(self, seconds: float) -> None:
        """Wait `seconds`, in steps of `idle_s`; a link that comes back meanwhile (offline, then
        online) ends the wait, so a long backoff from the outage does not delay the upload."""
        was_online = self._online()
        while seconds > 0:
            step = min(seconds, self._idle_s)
            await self._sleep(step)
            seconds -= step
            online = self._online()
            if online and not was_online:
                return
            was_online = online

    async def step(self) -> float:
        """One upload attempt; how long to wait before the next."""
        try:
            return await self._attempt()
        except WorkerClosed:
            raise
        except Exception as exc:
            return self._failed(exc)

    async def _attempt(self) -> float:
        if not self._online():
            await self._spool.purge_expired()  # keep the expired count and the disk current
            return self._idle_s
        batch = await self._spool.take_batch(self._batch_size)
        if not batch:
            return self._idle_s
        outstanding = {record.id for record in batch}
        try:
            return await self._deliver(batch, outstanding)
        finally:
            self._spool.release(sorted(outstanding))

    async def _deliver(self, batch: list[Record], outstanding: set[int]) -> float:
        await self._sleep(self.bucket.reserve(len(batch)))
        now = self._spool.now()
        live = [record for record in batch if record.expires > now]
        self.stats.skipped_expired += len(batch) - len(live)
        if not live:
            return 0.0
        accepted = await self._send(live)
        done = [record.id for record in live if record.key in accepted]
        if done:
            self.stats.delivered += await self._ack(done)
            outstanding.difference_update(done)
        if len(done) < len(live):
            raise DeliveryFailed(f"{len(live) - len(done)} record(s) not accepted")
        self.stats.batches += 1
        self.stats.last_batch_at = self._clock()
        if self.stats.consecutive_failures:
            log.warning("spool uploads succeed again")
            self.stats.consecutive_failures = 0
        return 0.0

    async def _ack(self, ids: Sequence[int]) -> int:
        # Shielded: the collector holds these keys now, so forgetting them must not be undone
        # halfway by a cancellation (a resend would only be de-duplicated, but costs a batch).
        return await asyncio.shield(self._spool.ack(ids))

    def _failed(self, exc: BaseException) -> float:
        self.stats.failures += 1
        self.stats.consecutive_failures += 1
        self.stats.last_failure = type(exc).__name__
        base, cap = self._backoff
        ceiling = min(cap, base * 2.0 ** min(self.stats.consecutive_failures - 1, 30))
        if self.stats.consecutive_failures == 1:  # once per outage: backoff retries are quiet
            if isinstance(exc, CollectorRefused):  # our own words: a status, never a reply
                log.warning(
                    "spool uploads failing: %s; check spool.collector_key_file here and the "
                    "collector's spool.collector_sites; retrying with backoff",
                    exc,
                )
            else:
                log.warning("spool uploads failing (%s); retrying with backoff", type(exc).__name__)
        return ceiling * self._rng.uniform(0.5, 1.0)
