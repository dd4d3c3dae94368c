"""The spool (store, drainer, wire format, collector) on real SQLite files in tmp_path, with a
fake clock for TTLs and rate limits and a real loopback aiohttp server for the collector."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.api.errors import error_middleware
from router.errors import ConfigError, UnsupportedMediaType
from router.settings import Settings, load_settings
from router.spool import (
    BatchError,
    DeliveryFailed,
    Drainer,
    Limits,
    Record,
    Spool,
    SpoolUnavailable,
    TokenBucket,
    http_sender,
    limits_of,
)
from router.spool.collector import COLLECTOR_PATH, CollectorStore, collector_routes
from router.spool.records import RECORD_OVERHEAD
from router.spool.wire import NDJSON, Item, decode_accepted, decode_batch, encode_batch

TIMEOUT = aiohttp.ClientTimeout(total=30.0)


class FakeClock:
    """Wall time that moves only when told to; `sleep` advances it instead of waiting."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "spool.db"


@pytest.fixture
def spool(path: Path, clock: FakeClock) -> Iterator[Spool]:
    with Spool.open_sync(path, Limits(ttl_s=100.0), clock=clock) as opened:
        yield opened


def cost(key: str, payload: bytes, kind: str = "sample") -> int:
    return len(payload) + len(key) + len(kind) + RECORD_OVERHEAD


class TestAppend:
    def test_put_returns_the_key_once_committed(self, spool: Spool) -> None:
        """A put answers with its key; the record is there with its payload and TTL."""
        key = spool.put_sync("sample", b"abc", key="k1")
        assert key == "k1"
        [record] = spool.take_batch_sync(10)
        assert (record.key, record.kind, record.payload) == ("k1", "sample", b"abc")
        assert record.expires - record.created == 100.0
        counts = spool.counts_sync()
        assert (counts.produced, counts.pending, counts.pending_bytes) == (1, 1, cost("k1", b"abc"))

    def test_generated_keys_are_unique(self, spool: Spool) -> None:
        """Without a key the spool makes one up, different every time."""
        keys = {spool.put_sync("sample", b"x") for _ in range(50)}
        assert len(keys) == 50
        assert None not in keys

    def test_same_key_is_stored_once(self, spool: Spool) -> None:
        """Appending an already queued key is idempotent: one record, produced once."""
        assert spool.put_sync("sample", b"a", key="dup") == "dup"
        assert spool.put_sync("sample", b"b", key="dup") == "dup"
        assert spool.counts_sync().produced == 1
        assert [r.payload for r in spool.take_batch_sync(10)] == [b"a"]

    @pytest.mark.parametrize(
        ("kind", "payload", "key", "ttl"),
        [
            ("bad kind", b"x", None, None),
            ("sample", b"x", "white space", None),
            ("sample", b"x", "k" * 129, None),
            ("sample", "text", None, None),
            ("sample", b"x", None, 0.0),
        ],
    )
    def test_programming_errors_raise(
        self, spool: Spool, kind: str, payload: bytes, key: str | None, ttl: float | None
    ) -> None:
        """Malformed names, non-bytes payloads and non-positive TTLs are caller bugs."""
        with pytest.raises(ValueError, match="spool"):
            spool.put_sync(kind, payload, ttl, key=key)

    def test_survives_reopen(self, path: Path, clock: FakeClock) -> None:
        """Records and counters are on disk: a new process sees them as they were."""
        with Spool.open_sync(path, clock=clock) as first:
            for i in range(5):
                first.put_sync("sample", bytes([i]), key=f"k{i}")
            first.ack_sync([r.id for r in first.take_batch_sync(2)])
        with Spool.open_sync(path, clock=clock) as second:
            counts = second.counts_sync()
            assert (counts.produced, counts.delivered, counts.pending) == (5, 2, 3)
            assert [r.key for r in second.take_batch_sync(10)] == ["k2", "k3", "k4"]

    async def test_concurrent_puts_share_commits_and_all_land(self, path: Path) -> None:
        """Hundreds of puts at once (group commit) all return keys and are all counted."""
        spool = await Spool.open(path)
        try:
            keys = await asyncio.gather(*(spool.put("sample", b"p" * 50) for _ in range(400)))
            assert None not in keys
            assert len(set(keys)) == 400
            counts = await spool.counts()
            assert (counts.produced, counts.pending) == (400, 400)
        finally:
            await spool.close()

    async def test_one_failing_put_does_not_undo_its_group(self, path: Path) -> None:
        """A rejected put committed alongside others leaves the others stored."""
        spool = await Spool.open(path, Limits(max_bytes=10_000))
        try:
            puts = [spool.put("sample", b"x" * 10, key=f"k{i}") for i in range(20)]
            puts.insert(10, spool.put("sample", b"x" * 20_000, key="huge"))
            keys = await asyncio.gather(*puts)
            assert keys.count(None) == 1
            counts = await spool.counts()
            assert (counts.produced, counts.rejected, counts.pending) == (20, 1, 20)
        finally:
            await spool.close()


class TestFullPolicy:
    def test_drop_oldest_by_records(self, path: Path) -> None:
        """At max_records the oldest records make room for new ones, each counted dropped."""
        with Spool.open_sync(path, Limits(max_records=3)) as spool:
            for i in range(5):
                assert spool.put_sync("sample", b"x", key=f"k{i}") == f"k{i}"
            counts = spool.counts_sync()
            assert (counts.produced, counts.dropped, counts.pending) == (5, 2, 3)
            assert counts.balanced
            assert [r.key for r in spool.take_batch_sync(10)] == ["k2", "k3", "k4"]

    def test_drop_oldest_by_bytes(self, path: Path) -> None:
        """At max_bytes as many of the oldest go as the new record needs, no more."""
        one = cost("k0", b"x" * 100)
        with Spool.open_sync(path, Limits(max_bytes=3 * one)) as spool:
            for i in range(3):
                spool.put_sync("sample", b"x" * 100, key=f"k{i}")
            spool.put_sync("sample", b"x" * 150, key="big")
            counts = spool.counts_sync()
            assert (counts.dropped, counts.pending) == (2, 2)
            assert counts.pending_bytes <= 3 * one
            assert [r.key for r in spool.take_batch_sync(10)] == ["k2", "big"]

    def test_reject_new(self, path: Path) -> None:
        """Under reject-new a full spool refuses the append (None, counted) and keeps the old."""
        with Spool.open_sync(path, Limits(max_records=2, on_full="reject-new")) as spool:
            assert spool.put_sync("sample", b"x", key="a") == "a"
            assert spool.put_sync("sample", b"x", key="b") == "b"
            assert spool.put_sync("sample", b"x", key="c") is None
            counts = spool.counts_sync()
            assert (counts.produced, counts.rejected, counts.dropped, counts.pending) == (
                2,
                1,
                0,
                2,
            )
            assert counts.balanced

    def test_record_larger_than_the_spool_is_rejected(self, path: Path) -> None:
        """A record that could never fit is refused without dropping anything."""
        with Spool.open_sync(path, Limits(max_bytes=1000)) as spool:
            spool.put_sync("sample", b"x", key="small")
            assert spool.put_sync("sample", b"x" * 2000) is None
            counts = spool.counts_sync()
            assert (counts.rejected, counts.dropped, counts.pending) == (1, 0, 1)

    def test_expired_records_go_before_live_ones(self, path: Path, clock: FakeClock) -> None:
        """When full, records past their TTL are purged (expired) before any live one drops."""
        with Spool.open_sync(path, Limits(max_records=2), clock=clock) as spool:
            spool.put_sync("sample", b"x", 5.0, key="short")
            spool.put_sync("sample", b"x", 500.0, key="long")
            clock.now += 10
            spool.put_sync("sample", b"x", key="new")
            counts = spool.counts_sync()
            assert (counts.expired, counts.dropped, counts.pending) == (1, 0, 2)

    def test_records_in_flight_are_never_dropped(self, path: Path) -> None:
        """Leased records are not dropped: with nothing else to drop, the new one is refused."""
        with Spool.open_sync(path, Limits(max_records=2)) as spool:
            spool.put_sync("sample", b"x", key="a")
            spool.put_sync("sample", b"x", key="b")
            batch = spool.take_batch_sync(10)
            assert spool.put_sync("sample", b"x", key="c") is None
            assert spool.ack_sync([r.id for r in batch]) == 2
            counts = spool.counts_sync()
            assert (counts.delivered, counts.rejected, counts.dropped) == (2, 1, 0)
            assert counts.balanced


class TestExpiry:
    def test_expired_records_are_never_handed_out(self, spool: Spool, clock: FakeClock) -> None:
        """Past its TTL a record is purged and counted expired, not returned."""
        spool.put_sync("sample", b"x", 10.0, key="short")
        spool.put_sync("sample", b"x", 1000.0, key="long")
        clock.now += 10.0  # expiry is inclusive: at exactly created + ttl it is gone
        assert [r.key for r in spool.take_batch_sync(10)] == ["long"]
        counts = spool.counts_sync()
        assert (counts.expired, counts.pending) == (1, 1)

    def test_expiry_counts_are_exact_across_restarts(self, path: Path, clock: FakeClock) -> None:
        """TTLs are wall-clock times on disk: expiry counted after a restart is exact."""
        with Spool.open_sync(path, clock=clock) as spool:
            for i in range(30):
                spool.put_sync("sample", b"x", 5.0 if i % 3 else 50.0, key=f"k{i}")
        clock.now += 20
        with Spool.open_sync(path, clock=clock) as spool:
            assert spool.purge_expired_sync() == 20
            assert spool.purge_expired_sync() == 0
            counts = spool.counts_sync()
            assert (counts.produced, counts.expired, counts.pending) == (30, 20, 10)

    def test_a_leased_record_acked_after_its_ttl_is_delivered(
        self, spool: Spool, clock: FakeClock
    ) -> None:
        """A record handed out in time and acknowledged late counts once, as delivered."""
        spool.put_sync("sample", b"x", 5.0, key="k")
        [record] = spool.take_batch_sync(1)
        clock.now += 10
        assert spool.purge_expired_sync() == 0
        assert spool.ack_sync([record.id]) == 1
        counts = spool.counts_sync()
        assert (counts.delivered, counts.expired) == (1, 0)

    def test_a_released_record_past_its_ttl_expires(self, spool: Spool, clock: FakeClock) -> None:
        """Handed back after its TTL, a record is purged at the next take."""
        spool.put_sync("sample", b"x", 5.0, key="k")
        batch = spool.take_batch_sync(1)
        clock.now += 10
        spool.release([r.id for r in batch])
        assert spool.take_batch_sync(1) == []
        assert spool.counts_sync().expired == 1


class TestLeases:
    def test_taken_records_are_not_taken_again(self, spool: Spool) -> None:
        """A leased record is invisible to the next take until released."""
        for i in range(4):
            spool.put_sync("sample", b"x", key=f"k{i}")
        first = spool.take_batch_sync(2)
        assert [r.key for r in spool.take_batch_sync(10)] == ["k2", "k3"]
        spool.release([r.id for r in first])
        again = spool.take_batch_sync(10)
        assert [(r.key, r.attempts) for r in again] == [("k0", 2), ("k1", 2)]

    def test_ack_only_removes_leased_records(self, spool: Spool) -> None:
        """Acknowledging an id that is not in flight changes nothing."""
        spool.put_sync("sample", b"x", key="k")
        [record] = spool.take_batch_sync(1)
        spool.release([record.id])
        assert spool.ack_sync([record.id]) == 0
        assert spool.counts_sync().delivered == 0

    def test_leases_end_with_the_process(self, path: Path) -> None:
        """After a restart records in flight before it are handed out again."""
        with Spool.open_sync(path) as spool:
            spool.put_sync("sample", b"x", key="k")
            assert len(spool.take_batch_sync(1)) == 1
        with Spool.open_sync(path) as spool:
            [record] = spool.take_batch_sync(1)
            assert (record.key, record.attempts) == ("k", 2)


class TestIntegrity:
    def test_a_damaged_record_is_discarded_and_counted(self, path: Path) -> None:
        """A payload changed at rest fails its checksum: dropped as corrupt, never sent."""
        with Spool.open_sync(path) as spool:
            for i in range(3):
                spool.put_sync("sample", b"payload", key=f"k{i}")
        raw = sqlite3.connect(path)
        raw.execute("UPDATE records SET payload = ? WHERE key = 'k1'", (b"pAyload",))
        raw.commit()
        raw.close()
        with Spool.open_sync(path) as spool:
            assert [r.key for r in spool.take_batch_sync(10)] == ["k0", "k2"]
            counts = spool.counts_sync()
            assert (counts.corrupt, counts.pending) == (1, 2)
            assert counts.balanced

    def test_a_damaged_file_is_moved_aside(self, path: Path) -> None:
        """A file failing its integrity check is kept under another name; a new spool starts."""
        with Spool.open_sync(path) as spool:
            for i in range(500):
                spool.put_sync("sample", b"p" * 200, key=f"k{i}")
        size = path.stat().st_size
        with path.open("r+b") as file:
            file.seek(size // 2)
            file.write(b"\xa5" * 4096)
        with Spool.open_sync(path) as spool:
            assert spool.counts_sync().produced == 0
            assert spool.put_sync("sample", b"x") is not None
        aside = [p.name for p in path.parent.iterdir() if ".corrupt-" in p.name]
        assert len(aside) == 1

    def test_a_file_from_a_later_release_is_refused(self, path: Path) -> None:
        """A spool whose layout is newer than this release's (a site rolled back) stops the
        opening with a clear error and stays untouched, instead of losing every append."""
        with Spool.open_sync(path) as spool:
            spool.put_sync("sample", b"kept", key="k0")
        raw = sqlite3.connect(path)
        raw.execute("ALTER TABLE records ADD COLUMN region TEXT NOT NULL DEFAULT 'x'")
        raw.execute("PRAGMA user_version = 2")
        raw.commit()
        raw.close()
        before = path.read_bytes()
        with pytest.raises(SpoolUnavailable, match=r"layout \(version 2\) is newer"):
            Spool.open_sync(path)
        assert path.read_bytes() == before
        assert not [p for p in path.parent.iterdir() if ".corrupt-" in p.name]

    def test_a_file_from_before_layout_versions_opens(self, path: Path) -> None:
        """A spool written before the layout was numbered (user_version 0) keeps its records
        and is marked with the current layout."""
        with Spool.open_sync(path) as spool:
            spool.put_sync("sample", b"kept", key="k0")
        raw = sqlite3.connect(path)
        raw.execute("PRAGMA user_version = 0")
        raw.commit()
        raw.close()
        with Spool.open_sync(path) as spool:
            assert [r.key for r in spool.take_batch_sync(10)] == ["k0"]
        raw = sqlite3.connect(path)
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
        raw.close()

    def test_a_collector_store_from_a_later_release_is_refused(self, tmp_path: Path) -> None:
        """The collector's store is versioned the same way as the spool."""
        store_path = tmp_path / "collector.sqlite3"
        CollectorStore.open_sync(store_path).close_sync()
        raw = sqlite3.connect(store_path)
        raw.execute("PRAGMA user_version = 9")
        raw.commit()
        raw.close()
        with pytest.raises(SpoolUnavailable, match=r"layout \(version 9\) is newer"):
            CollectorStore.open_sync(store_path)

    def test_new_files_are_not_world_readable(self, tmp_path: Path) -> None:
        """A new spool, its WAL and a new collector store are readable by owner and group
        only, whatever the umask allows (they hold what the site's answers said)."""
        old_umask = os.umask(0o022)
        try:
            spool_path = tmp_path / "spool.sqlite3"
            with Spool.open_sync(spool_path) as spool:
                spool.put_sync("sample", b"redacted text", key="k0")
                wal = Path(f"{spool_path}-wal")
                assert wal.exists()
                assert stat.S_IMODE(wal.stat().st_mode) == 0o640
            store_path = tmp_path / "collector.sqlite3"
            CollectorStore.open_sync(store_path).close_sync()
        finally:
            os.umask(old_umask)
        assert stat.S_IMODE(spool_path.stat().st_mode) == 0o640
        assert stat.S_IMODE(store_path.stat().st_mode) == 0o640

    def test_one_process_per_file(self, spool: Spool, path: Path) -> None:
        """A second opener of a spool in use fails clearly instead of sharing the queue."""
        with pytest.raises(SpoolUnavailable, match="in use by another process"):
            Spool.open_sync(path)

    def test_unusable_path(self, tmp_path: Path) -> None:
        """A path that cannot hold a file fails to open with an error naming it."""
        (tmp_path / "plain-file").write_bytes(b"")
        with pytest.raises(SpoolUnavailable, match="cannot open spool"):
            Spool.open_sync(tmp_path / "plain-file" / "spool.db")
        with pytest.raises(SpoolUnavailable, match="cannot open spool"):
            Spool.open_sync(tmp_path)

    def test_an_unusable_collector_store_says_why_once(self, tmp_path: Path) -> None:
        """A collector store that cannot be opened (here a folder by its name) is refused with
        the reason as the spool words it, not an OSError's repr repeating the path."""
        (tmp_path / "collector.sqlite3").mkdir()
        with pytest.raises(SpoolUnavailable) as refused:
            CollectorStore.open_sync(tmp_path / "collector.sqlite3")
        assert str(refused.value) == (
            f"cannot open collector store {tmp_path}/collector.sqlite3: Is a directory"
        )

    async def test_put_after_close_is_counted_not_raised(self, path: Path) -> None:
        """Appends that cannot reach the disk return None and count as failed."""
        spool = await Spool.open(path)
        await spool.close()
        assert await spool.put("sample", b"x") is None
        assert spool.put_sync("sample", b"x") is None
        assert spool.failed == 2


class TestTokenBucket:
    def test_burst_then_rate(self, clock: FakeClock) -> None:
        """The first `burst` tokens are free; then each costs 1/rate seconds."""
        bucket = TokenBucket(10.0, 5, clock)
        assert bucket.reserve(5) == 0.0
        assert bucket.reserve(5) == pytest.approx(0.5)

    def test_refills_with_time_up_to_the_burst(self, clock: FakeClock) -> None:
        """Idle time refills the bucket, never beyond its burst."""
        bucket = TokenBucket(10.0, 5, clock)
        bucket.reserve(5)
        clock.now += 100
        assert bucket.reserve(5) == 0.0
        assert bucket.reserve(1) == pytest.approx(0.1)


class Collector:
    """A `Send` that remembers what it received and can fail or refuse keys on demand."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.fail = 0
        self.refuse: set[str] = set()
        self.hold: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, records: list[Record]) -> set[str]:
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.fail:
            self.fail -= 1
            raise DeliveryFailed("the collector answered 503")
        self.received.extend(r.key for r in records)
        return {r.key for r in records} - self.refuse


def drainer(spool: Spool, send: Collector, clock: FakeClock, **kwargs: object) -> Drainer:
    options: dict[str, object] = {"rate_per_s": 100.0, "batch_size": 10}
    options.update(kwargs)
    return Drainer(spool, send, clock=clock, sleep=clock.sleep, **options)  # type: ignore[arg-type]


class TestDrainer:
    async def test_delivers_everything_once(self, path: Path, clock: FakeClock) -> None:
        """Batches go out oldest first; acknowledged records are deleted and counted."""
        spool = await Spool.open(path, clock=clock)
        for i in range(25):
            await spool.put("sample", b"x", key=f"k{i:02}")
        send = Collector()
        drain = drainer(spool, send, clock)
        while (await spool.counts()).pending:
            await drain.step()
        assert send.received == [f"k{i:02}" for i in range(25)]
        counts = await spool.counts()
        assert (counts.delivered, counts.pending) == (25, 0)
        assert drain.stats.batches == 3
        await spool.close()

    async def test_rate_limited(self, path: Path, clock: FakeClock) -> None:
        """Beyond the first batch, uploads wait batch_size / rate seconds each."""
        spool = await Spool.open(path, clock=clock)
        for _ in range(40):
            await spool.put("sample", b"x")
        drain = drainer(spool, Collector(), clock, rate_per_s=20.0)
        for _ in range(4):
            await drain.step()
        assert clock.slept == [0.0, pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5)]
        await spool.close()

    async def test_failure_backs_off_and_keeps_records(self, path: Path, clock: FakeClock) -> None:
        """Failed uploads delete nothing; waits grow exponentially up to the cap."""
        spool = await Spool.open(path, clock=clock)
        await spool.put("sample", b"x", key="k")
        send = Collector()
        send.fail = 6
        drain = drainer(spool, send, clock, backoff_base_s=1.0, backoff_max_s=8.0)
        pauses = [await drain.step() for _ in range(6)]
        ceilings = [1, 2, 4, 8, 8, 8]
        assert all(c / 2 <= p <= c for p, c in zip(pauses, ceilings, strict=True))
        assert (await spool.counts()).pending == 1
        assert await drain.step() == 0.0
        assert send.received == ["k"]
        assert drain.stats.consecutive_failures == 0
        assert drain.stats.failures == 6
        await spool.close()

    async def test_status_says_how_uploads_go(self, path: Path, clock: FakeClock) -> None:
        """status(): failing while the last attempt failed, ok (with the age of the last
        batch) once one goes through, offline while the link is down whatever came before."""
        spool = await Spool.open(path, clock=clock)
        await spool.put("sample", b"x", key="k")
        send = Collector()
        send.fail = 1
        online = True
        drain = drainer(spool, send, clock, online=lambda: online)
        assert drain.status()["state"] == "ok"
        await drain.step()
        failing = drain.status()
        assert (failing["state"], failing["failures"], failing["consecutive_failures"]) == (
            "failing",
            1,
            1,
        )
        assert (failing["last_failure"], failing["last_batch_age_s"]) == ("DeliveryFailed", None)
        await drain.step()
        clock.now += 3.0
        good = drain.status()
        assert (good["state"], good["batches"], good["delivered"]) == ("ok", 1, 1)
        assert good["last_batch_age_s"] == pytest.approx(3.0)
        online = False
        assert drain.status()["state"] == "offline"
        await spool.close()

    async def test_only_acknowledged_keys_are_deleted(self, path: Path, clock: FakeClock) -> None:
        """Records whose keys the collector did not list stay, and the drainer backs off."""
        spool = await Spool.open(path, clock=clock)
        for i in range(3):
            await spool.put("sample", b"x", key=f"k{i}")
        send = Collector()
        send.refuse = {"k1"}
        drain = drainer(spool, send, clock)
        assert await drain.step() > 0
        counts = await spool.counts()
        assert (counts.delivered, counts.pending) == (2, 1)
        send.refuse = set()
        assert await drain.step() == 0.0
        assert send.received == ["k0", "k1", "k2", "k1"]
        await spool.close()

    async def test_offline_sends_nothing_but_expires(self, path: Path, clock: FakeClock) -> None:
        """Offline, nothing is sent; records whose TTL passes are counted expired."""
        spool = await Spool.open(path, clock=clock)
        await spool.put("sample", b"x", 5.0, key="short")
        await spool.put("sample", b"x", 500.0, key="long")
        send = Collector()
        online = False
        drain = drainer(spool, send, clock, online=lambda: online, idle_s=2.0)
        for _ in range(5):
            await clock.sleep(await drain.step())
        assert send.received == []
        assert (await spool.counts()).expired == 1
        online = True
        await drain.step()
        assert send.received == ["long"]
        counts = await spool.counts()
        assert (counts.produced, counts.delivered, counts.expired, counts.pending) == (2, 1, 1, 0)
        await spool.close()

    async def test_the_link_coming_back_ends_a_backoff(self, path: Path, clock: FakeClock) -> None:
        """A 60 s backoff taken in an outage ends within one idle step once the link is back
        (offline, then online), instead of delaying the upload for the rest of the minute."""
        spool = await Spool.open(path, clock=clock)
        states = iter([False, False, False, True])
        drain = drainer(spool, Collector(), clock, online=lambda: next(states, True), idle_s=2.0)
        await drain.pause(60.0)
        assert clock.slept == [2.0, 2.0, 2.0]
        await spool.close()

    async def test_a_backoff_while_online_runs_its_course(
        self, path: Path, clock: FakeClock
    ) -> None:
        """With the link up all along (the collector itself failing), the backoff is kept."""
        spool = await Spool.open(path, clock=clock)
        drain = drainer(spool, Collector(), clock, online=lambda: True, idle_s=2.0)
        await drain.pause(7.0)
        assert clock.slept == [2.0, 2.0, 2.0, 1.0]
        await spool.close()

    async def test_expiry_while_rate_limited_is_not_sent(
        self, path: Path, clock: FakeClock
    ) -> None:
        """A record that expires while its batch waits for tokens is not sent, then expires."""
        spool = await Spool.open(path, clock=clock)
        for i in range(2):
            await spool.put("sample", b"x", 1000.0, key=f"long{i}")
        await spool.put("sample", b"x", 1.5, key="short")
        send = Collector()
        drain = drainer(spool, send, clock, rate_per_s=1.0, batch_size=2)
        await drain.step()  # the first two, free
        await drain.step()  # "short" waits 1 s for a token: still alive
        assert send.received == ["long0", "long1", "short"]
        await spool.put("sample", b"x", 0.5, key="brief")
        await drain.step()  # waits 1 s: "brief" is past its TTL when the wait ends
        assert "brief" not in send.received
        assert drain.stats.skipped_expired == 1
        await drain.step()
        counts = await spool.counts()
        assert (counts.delivered, counts.expired, counts.pending) == (3, 1, 0)
        await spool.close()

    async def test_cancelled_upload_releases_its_records(self, path: Path) -> None:
        """Cancelling the drainer mid-upload hands the batch back for the next drainer."""
        spool = await Spool.open(path)
        await spool.put("sample", b"x", key="k")
        send = Collector()
        send.hold = asyncio.Event()
        drain = Drainer(spool, send, rate_per_s=100.0, batch_size=10)
        async with asyncio.TaskGroup() as group:
            task = group.create_task(drain.run())
            await send.entered.wait()
            task.cancel()
        assert [r.key for r in await spool.take_batch(10)] == ["k"]
        await spool.close()

    async def test_run_ends_when_the_spool_closes(self, path: Path) -> None:
        """A drainer whose spool closed stops by itself."""
        spool = await Spool.open(path)
        await spool.close()
        drain = Drainer(spool, Collector(), rate_per_s=100.0, batch_size=10)
        await asyncio.wait_for(drain.run(), 10.0)


def item(key: str, payload: bytes = b"p") -> Item:
    return Item(key, "sample", payload, 1.0, 2.0)


def ndjson(*entries: object) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in entries)


GOOD = {"key": "k1", "kind": "sample", "created": 1.5, "payload": base64.b64encode(b"hi").decode()}


class TestWire:
    def test_round_trip(self) -> None:
        """What the drainer encodes, the collector decodes to the same fields."""
        records = [
            Record(1, "k1", "sample", b"\x00\xff", 1.0, 9.0, 1),
            Record(2, "k2", "audit", b"", 2.0, 8.0, 3),
        ]
        items = decode_batch(encode_batch(records), NDJSON)
        assert items == [
            Item("k1", "sample", b"\x00\xff", 1.0, 9.0),
            Item("k2", "audit", b"", 2.0, 8.0),
        ]

    def test_json_object_form(self) -> None:
        """`{"records": [...]}` as application/json is accepted too; expires is optional."""
        body = orjson.dumps({"records": [GOOD]})
        assert decode_batch(body, "application/json") == [Item("k1", "sample", b"hi", 1.5, None)]

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (b"{not json\n", "line 1: not valid JSON"),
            (ndjson([1]), "record 0: not an object"),
            (ndjson({**GOOD, "key": "has space"}), "record 0: key"),
            (ndjson(GOOD, {**GOOD, "kind": ""}), "record 1: kind"),
            (ndjson({**GOOD, "payload": "!!"}), "record 0: payload is not valid base64"),
            (ndjson({**GOOD, "payload": 5}), "record 0: payload must be"),
            (ndjson({**GOOD, "created": True}), "record 0: created must be a number"),
            (ndjson({**GOOD, "created": "1"}), "record 0: created must be a number"),
            (ndjson({**GOOD, "expires": [1]}), "record 0: expires must be a number"),
            (ndjson(*[GOOD] * 10_001), "at most 10000 records"),
        ],
    )
    def test_malformed_batches(self, body: bytes, message: str) -> None:
        """Bad batches raise BatchError (400) naming where, never quoting what was sent."""
        with pytest.raises(BatchError, match=message) as caught:
            decode_batch(body, NDJSON)
        assert caught.value.status == 400
        assert "has space" not in caught.value.message

    def test_json_form_needs_a_records_list(self) -> None:
        """An application/json batch must be an object with a "records" list."""
        with pytest.raises(BatchError, match="records"):
            decode_batch(b"[]", "application/json")

    def test_other_media_types(self) -> None:
        """Anything else is 415."""
        with pytest.raises(UnsupportedMediaType):
            decode_batch(b"", "text/plain")

    def test_accepted_keys_are_limited_to_those_sent(self) -> None:
        """A collector cannot make the sender forget a key it did not send."""
        body = orjson.dumps({"accepted": ["a", "b", "zz", 7]})
        assert decode_accepted(body, ["a", "b", "c"]) == {"a", "b"}
        with pytest.raises(DeliveryFailed):
            decode_accepted(b"<html>", ["a"])
        with pytest.raises(DeliveryFailed):
            decode_accepted(b'{"accepted": "a"}', ["a"])

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=2048) | st.text(max_size=512).map(str.encode))
    def test_decoder_is_total(self, body: bytes) -> None:
        """Any bytes decode to items or raise BatchError: no other exception escapes."""
        for media in (NDJSON, "application/json"):
            with contextlib.suppress(BatchError):
                decode_batch(body, media)


class TestCollectorStore:
    def test_deduplicates_within_and_across_batches(self, tmp_path: Path) -> None:
        """Each key is stored once; every key of a batch is listed as accepted."""
        store = CollectorStore.open_sync(tmp_path / "collector.db")
        first = store.add_sync([item("a"), item("b"), item("a")])
        assert (first.accepted, first.new, first.duplicates) == (["a", "b"], 2, 1)
        second = store.add_sync([item("b", b"other"), item("c")])
        assert (second.accepted, second.new, second.duplicates) == (["b", "c"], 1, 1)
        stored = store.read_sync()
        assert [(r.item.key, r.item.payload) for r in stored] == [
            ("a", b"p"),
            ("b", b"p"),
            ("c", b"p"),
        ]
        assert store.counts_sync() == {"stored": 3, "duplicates": 2, "removed": 0, "held_bytes": 3}
        store.close_sync()

    def test_seen_keys_survive_a_restart(self, tmp_path: Path) -> None:
        """De-duplication holds across collector restarts: keys are on disk."""
        store = CollectorStore.open_sync(tmp_path / "collector.db")
        store.add_sync([item("a")])
        store.close_sync()
        store = CollectorStore.open_sync(tmp_path / "collector.db")
        assert store.add_sync([item("a")]).new == 0
        assert store.read_sync(after=1) == []
        store.close_sync()


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[tuple[str, CollectorStore]]:
    store = await CollectorStore.open(tmp_path / "collector.db")
    app = web.Application(middlewares=[error_middleware])
    app.add_routes(collector_routes(store))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}{COLLECTOR_PATH}", store
    finally:
        await server.close()
        await store.close()


class TestCollectorRoute:
    async def test_post_twice_stores_once(self, collector: tuple[str, CollectorStore]) -> None:
        """A resent batch is acknowledged in full and stored once."""
        url, store = collector
        body = ndjson(GOOD, {**GOOD, "key": "k2"})
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            answers = []
            for _ in range(2):
                async with http.post(url, data=body, headers={"Content-Type": NDJSON}) as resp:
                    assert resp.status == 200
                    answers.append(await resp.json())
        assert answers[0] == {"accepted": ["k1", "k2"], "new": 2, "duplicates": 0}
        assert answers[1] == {"accepted": ["k1", "k2"], "new": 0, "duplicates": 2}
        assert len(await store.read()) == 2

    async def test_bad_batches_are_client_errors(
        self, collector: tuple[str, CollectorStore]
    ) -> None:
        """Malformed batches get 400 and other media types 415, with a JSON error."""
        url, store = collector
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            async with http.post(url, data=b"{oops", headers={"Content-Type": NDJSON}) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["code"] == "malformed_body"
            async with http.post(url, data=b"x", headers={"Content-Type": "text/plain"}) as resp:
                assert resp.status == 415
        assert await store.read() == []

    async def test_storage_failure_is_503(self, collector: tuple[str, CollectorStore]) -> None:
        """A collector that cannot store answers 503 with Retry-After, so sites keep the batch."""
        url, store = collector
        await store.close()
        headers = {"Content-Type": NDJSON}
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as http,
            http.post(url, data=ndjson(GOOD), headers=headers) as resp,
        ):
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "5"

    async def test_http_sender_end_to_end(
        self, collector: tuple[str, CollectorStore], path: Path
    ) -> None:
        """The drainer's HTTP sender over a plain aiohttp transport empties a spool."""
        url, store = collector
        spool = await Spool.open(path)
        for i in range(30):
            await spool.put("sample", f"payload {i}".encode(), key=f"k{i}")
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:

            async def post(
                target: str, body: bytes, headers: Mapping[str, str]
            ) -> tuple[int, bytes]:
                async with http.post(target, data=body, headers=headers) as resp:
                    return resp.status, await resp.read()

            drain = Drainer(spool, http_sender(post, url), rate_per_s=1000.0, batch_size=8)
            while (await spool.counts()).pending:
                assert await drain.step() == 0.0
        assert [r.item.payload for r in await store.read()] == [
            f"payload {i}".encode() for i in range(30)
        ]
        assert (await spool.counts()).delivered == 30
        await spool.close()

    async def test_http_sender_raises_on_error_status(
        self, collector: tuple[str, CollectorStore]
    ) -> None:
        """A non-200 answer is a failed delivery, never an acknowledgement."""

        async def post(target: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
            return 503, b'{"accepted": ["k"]}'

        with pytest.raises(DeliveryFailed, match="503"):
            await http_sender(post, "http://127.0.0.1:1/")([Record(1, "k", "s", b"", 0, 1, 1)])


class TestSettings:
    def test_spool_section(self, tmp_path: Path) -> None:
        """`spool:` in a site config: a relative path is resolved against the file's folder."""
        config = tmp_path / "site.yaml"
        config.write_text(
            "spool: {path: data/spool.db, max_bytes: 1000, max_records: 5, ttl_s: 60,"
            " on_full: reject-new, batch_size: 10, drain_rate_per_s: 5,"
            " collector_url: 'https://central.example/v1/spool/batches'}\n"
        )
        section = load_settings(config).spool
        assert section.path == tmp_path / "data" / "spool.db"
        assert limits_of(section) == Limits(1000, 5, 60.0, "reject-new")

    def test_bad_values_name_the_key(self, tmp_path: Path) -> None:
        """An unknown full policy is a config error that names the key."""
        config = tmp_path / "site.yaml"
        config.write_text("spool: {on_full: drop-newest}\n")
        with pytest.raises(ConfigError) as caught:
            load_settings(config)
        assert any(p.startswith("spool.on_full:") for p in caught.value.problems)

    def test_off_by_default(self) -> None:
        """No path, no spool."""
        assert Settings().spool.path is None
