"""The collector's settings for a long-running server: what start-up built is frozen out of the
cyclic collector's scans, and young objects are collected less often.

Why: under load, requests in flight survive the young collections and are promoted, so full
collections fall due every second or two; each scanned every module, model and policy object
loaded at start-up (~70k objects) with the event loop stopped, 10-50 ms during which every
connection waited: the p99 stalls of the cache-hit bench at 64 connections. Frozen objects are
never scanned (nor freed by the collector; start-up state lives as long as the process anyway).
"""

from __future__ import annotations

import gc

# Young collections every this many net container allocations instead of 700: a request's
# short-lived objects mostly die by reference counting before one runs, so fewer are promoted.
YOUNG_THRESHOLD = 10_000


def settle_after_startup() -> None:
    """Collect what start-up left behind, then freeze the survivors (call once it is serving)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
