"""The central collector's store is bounded by age and size (spool.collector_retention_s,
spool.collector_max_bytes): oldest records go first, removals are counted exactly, and a key
within the retention stays a duplicate. Real SQLite files throughout."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError

from router.settings import Settings
from router.spool.collector import CollectorStore
from router.spool.retention import Retention
from router.spool.wire import Item

DAY_S = 24 * 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def item(key: str, size: int = 100) -> Item:
    return Item(key, "sample", key.encode().ljust(size, b"."), 1.0, None)


def keys(store: CollectorStore) -> list[str]:
    return [r.item.key for r in store.read_sync()]


def test_records_past_the_retention_are_removed_oldest_first(tmp_path: Path) -> None:
    """Records received longer ago than the retention are removed and counted; younger ones
    stay, and their keys are still duplicates."""
    clock = Clock()
    store = CollectorStore.open_sync(
        tmp_path / "collector.db", clock=clock, retention=Retention(max_age_s=DAY_S)
    )
    store.add_sync([item("a"), item("b")])
    clock.now += DAY_S / 2
    store.add_sync([item("c")])
    clock.now += DAY_S / 2 + 1
    added = store.add_sync([item("d"), item("c")])
    assert (added.new, added.duplicates, added.removed) == (1, 1, 2)
    assert keys(store) == ["c", "d"]
    counts = store.counts_sync()
    assert (counts["removed"], counts["held_bytes"]) == (2, 200)
    store.close_sync()


def test_over_the_byte_bound_the_oldest_payloads_go_and_their_keys_stay(tmp_path: Path) -> None:
    """Past collector_max_bytes the oldest records are removed until the payload fits; a
    resend of a removed record within the retention is still a duplicate, not stored again."""
    clock = Clock()
    retention = Retention(max_age_s=DAY_S, max_bytes=1000)
    store = CollectorStore.open_sync(tmp_path / "collector.db", clock=clock, retention=retention)
    removed = [store.add_sync([item(f"k{n}", 300)]).removed for n in range(4)]
    assert removed == [0, 0, 0, 1]
    assert keys(store) == ["k1", "k2", "k3"]
    assert store.counts_sync()["removed"] == 1
    assert store.counts_sync()["held_bytes"] == 900
    resent = store.add_sync([item("k0", 300)])
    assert (resent.new, resent.duplicates, resent.removed) == (0, 1, 0)
    assert keys(store) == ["k1", "k2", "k3"]
    # Its key ages out with the retention, without being counted a second time.
    clock.now += DAY_S + 1
    last = store.add_sync([item("k4", 300)])
    assert last.removed == 3  # k1..k3; k0's kept key goes uncounted
    assert keys(store) == ["k4"]
    counts = store.counts_sync()
    assert (counts["removed"], counts["held_bytes"]) == (4, 300)
    store.close_sync()


def test_a_batch_larger_than_the_bound_keeps_only_what_fits(tmp_path: Path) -> None:
    """One batch over the bound on its own: the oldest of it go first, the newest stay."""
    store = CollectorStore.open_sync(tmp_path / "collector.db", retention=Retention(max_bytes=250))
    added = store.add_sync([item(f"k{n}") for n in range(5)])
    assert (added.new, added.removed) == (5, 3)
    assert keys(store) == ["k3", "k4"]
    store.close_sync()


def test_a_file_from_before_retention_is_counted_and_bounded(tmp_path: Path) -> None:
    """A collector file written before the bound existed (no tombstone column, no byte
    counter) opens with its payload bytes counted, and the bound applies to its records."""
    path = tmp_path / "collector.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE received (
            id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
            payload BLOB NOT NULL, created REAL NOT NULL, expires REAL, received REAL NOT NULL,
            site TEXT);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO counters VALUES ('stored', 3), ('duplicates', 0);
        """
    )
    for n in range(3):
        old.execute(
            "INSERT INTO received (key, kind, payload, created, received) VALUES (?, ?, ?, ?, ?)",
            (f"old{n}", "sample", b"x" * 400, 1.0, 1_000_000.0 + n),
        )
    old.commit()
    old.close()
    clock = Clock()
    clock.now += 10
    store = CollectorStore.open_sync(path, clock=clock, retention=Retention(max_bytes=1000))
    assert store.counts_sync()["held_bytes"] == 1200
    added = store.add_sync([item("new", 100)])
    assert (added.new, added.removed) == (1, 1)
    assert keys(store) == ["old1", "old2", "new"]
    assert store.add_sync([item("old0", 400)]).duplicates == 1
    store.close_sync()


def test_settings_default_validate_and_match_the_store_default() -> None:
    """The two settings have defaults equal to the store's, and must be positive."""
    spool = Settings().spool
    assert Retention.of(spool) == Retention()
    assert spool.collector_retention_s >= spool.ttl_s
    for bad in ({"collector_retention_s": 0}, {"collector_max_bytes": -1}):
        with pytest.raises(ValidationError):
            Settings.model_validate({"spool": bad})


def test_a_prune_without_a_batch_removes_what_aged_out(tmp_path: Path) -> None:
    """With no batch arriving, a prune alone removes and counts the records past the
    retention (a collector whose sites went quiet forgets them still)."""
    clock = Clock()
    store = CollectorStore.open_sync(
        tmp_path / "collector.db", clock=clock, retention=Retention(max_age_s=DAY_S)
    )
    store.add_sync([item("a"), item("b")])
    assert store.prune_sync() == 0
    clock.now += DAY_S + 1
    assert store.prune_sync() == 2
    assert keys(store) == []
    counts = store.counts_sync()
    assert (counts["removed"], counts["held_bytes"]) == (2, 0)
    store.close_sync()
