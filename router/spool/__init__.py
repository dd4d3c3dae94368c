"""Store-and-forward: what must reach the central tier waits in a durable on-disk spool and is
uploaded in batches when the link is up.

- store.py: the spool (SQLite, WAL, fsync per commit; bounded by bytes, records and TTL;
  exact persisted counters). Its docstring states the durability guarantees.
- drain.py: the drainer (rate-limited, backoff, at-least-once by idempotency key) and an HTTP
  sender over a transport the caller provides.
- wire.py: the upload format. collector.py: the central tier's endpoint, which de-duplicates
  by key (imported on its own: it needs aiohttp's server side). sites.py: who may upload
  (each site's key, or mTLS) and the site's own key file.
- records.py: the records table's operations (put, full policy, expiry, lease, ack).
- worker.py, schema.py: the thread that owns each SQLite connection, and the file's tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.spool.drain import Drainer, DrainStats, Post, Send, TokenBucket, http_sender
from router.spool.store import (
    Counts,
    FullPolicy,
    Limits,
    Record,
    Spool,
    SpoolError,
    SpoolUnavailable,
)
from router.spool.wire import BatchError, CollectorRefused, DeliveryFailed, Item

if TYPE_CHECKING:
    from router.settings import SpoolSettings

__all__ = [
    "BatchError",
    "CollectorRefused",
    "Counts",
    "DeliveryFailed",
    "DrainStats",
    "Drainer",
    "FullPolicy",
    "Item",
    "Limits",
    "Post",
    "Record",
    "Send",
    "Spool",
    "SpoolError",
    "SpoolUnavailable",
    "TokenBucket",
    "http_sender",
    "limits_of",
]


def limits_of(settings: SpoolSettings) -> Limits:
    """The store's limits from the site config's `spool:` section."""
    return Limits(
        max_bytes=settings.max_bytes,
        max_records=settings.max_records,
        ttl_s=settings.ttl_s,
        on_full=settings.on_full,
    )
