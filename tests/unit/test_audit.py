"""router/audit: records, keyed digests, the hash-chained log (A2 tamper detection, restarts,
torn tails, fsync policy, the async writer) and A5 (no raw values, no dictionary hits)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

import orjson
import pytest
from faker import Faker

from router.audit import (
    AuditLog,
    AuditLogError,
    AuditRecord,
    Digester,
    VerifyResult,
    id_time,
    log_file,
    new_audit_id,
    show,
    verify,
)
from router.audit import writer as writer_module
from router.audit.chain import canonical, head_path, seal
from router.audit.writer import Writer
from router.settings import load_settings

SECRET = b"audit-site-secret-for-tests-0123"
LIMIT_S = 5.0
WRONG_SECRET = b"an-attacker-guess-at-the-secret!"
CHAIN_LENGTH = 200
TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def record(**fields: Any) -> AuditRecord:
    defaults: dict[str, Any] = {
        "site": "ship-7",
        "tier": "edge",
        "api": "kserve-v2",
        "served_tier": "edge",
        "served_by": "color_classifier/2",
        "model": "color_classifier",
        "model_version": "2",
        "model_sha256": "ab" * 32,
        "policy_revision": "r1",
        "reasons": ("local:model-present",),
        "redactions": {"EMAIL": 1},
    }
    return AuditRecord(**(defaults | fields))


def write_log(path: Path, count: int, **options: Any) -> list[str]:
    ids = []
    with AuditLog(path, **options) as log:
        for index in range(count):
            entry = record(output=hashlib.sha256(str(index).encode()).hexdigest())
            log.append_sync(entry)
            ids.append(entry.id)
    return ids


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# -- A2: tamper detection ----------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """A pristine 200-entry log, its head file, and where each line starts."""

    data: bytes
    head: bytes
    ids: list[str]
    lines: list[bytes]

    def line_at(self, offset: int) -> int:
        """The 1-based line holding byte `offset`."""
        return self.data.count(b"\n", 0, offset) + 1

    def id_span(self, line: int) -> range:
        """The bytes of `"id":"..."` on a 1-based line, where a flip hides the id."""
        start = sum(len(raw) for raw in self.lines[: line - 1])
        at = start + self.lines[line - 1].index(b'"id":"')
        return range(at, at + len(b'"id":""') + 26)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    path = tmp_path_factory.mktemp("chain") / "log.jsonl"
    ids = write_log(path, CHAIN_LENGTH, fsync="never")
    return Chain(path.read_bytes(), head_path(path).read_bytes(), ids, lines_of(path))


@pytest.fixture
def check(tmp_path: Path, chain: Chain) -> Callable[[bytes], VerifyResult]:
    """Verify tampered bytes next to the pristine head file."""
    path = tmp_path / "log.jsonl"
    head_path(path).write_bytes(chain.head)

    def run(data: bytes) -> VerifyResult:
        path.write_bytes(data)
        return verify(path)

    return run


def first_bad(result: VerifyResult) -> tuple[int | None, str | None]:
    assert not result.ok
    assert result.problem is not None
    return result.problem.line, result.problem.audit_id


class TestTamperDetection:
    def test_pristine_chain_verifies(self, check: Callable[[bytes], VerifyResult], chain: Chain):
        """The untouched log verifies: 200 entries, one segment, no notes."""
        result = check(chain.data)
        assert result.ok, result.problem
        assert (result.entries, result.segments, result.notes) == (CHAIN_LENGTH, 1, ())

    def test_every_bit_flip_is_found_at_its_line(
        self, check: Callable[[bytes], VerifyResult], chain: Chain
    ) -> None:
        """A bit flipped anywhere, newlines included, is reported at the line that holds it."""
        rng = Random(2)
        for _ in range(300):
            offset, bit = rng.randrange(len(chain.data)), rng.randrange(8)
            tampered = bytearray(chain.data)
            tampered[offset] ^= 1 << bit
            line, audit_id = first_bad(check(bytes(tampered)))
            assert line == chain.line_at(offset), (offset, bit)
            if offset not in chain.id_span(line):
                assert audit_id == chain.ids[line - 1]

    def test_every_byte_of_a_short_chain(self, tmp_path: Path) -> None:
        """Every byte of a 2-entry log, newlines included, with one bit flipped (each bit
        position in turn), is found at its line."""
        path = tmp_path / "short.jsonl"
        write_log(path, 2, fsync="never")
        data = path.read_bytes()
        for offset in range(len(data)):
            tampered = bytearray(data)
            tampered[offset] ^= 1 << (offset % 8)
            path.write_bytes(tampered)
            line, _ = first_bad(verify(path))
            assert line == data.count(b"\n", 0, offset) + 1, offset

    def test_every_deleted_line_is_found(
        self, check: Callable[[bytes], VerifyResult], chain: Chain
    ) -> None:
        """Deleting a line is reported at the line after the gap; the last, as missing."""
        for index in [0, 1, CHAIN_LENGTH - 1, *Random(3).sample(range(CHAIN_LENGTH), 40)]:
            kept = chain.lines[:index] + chain.lines[index + 1 :]
            result = check(b"".join(kept))
            # Past the end the missing entry is named from the head file.
            assert first_bad(result) == (index + 1, chain.ids[min(index + 1, CHAIN_LENGTH - 1)])

    def test_every_reordering_is_found(
        self, check: Callable[[bytes], VerifyResult], chain: Chain
    ) -> None:
        """Two lines swapped, or one moved later, are reported at the first line out of place."""
        rng = Random(4)
        for _ in range(40):
            first, second = sorted(rng.sample(range(CHAIN_LENGTH), 2))
            swapped = list(chain.lines)
            swapped[first], swapped[second] = swapped[second], swapped[first]
            assert first_bad(check(b"".join(swapped))) == (first + 1, chain.ids[second])
            moved = list(chain.lines)
            moved.insert(second, moved.pop(first))
            assert first_bad(check(b"".join(moved))) == (first + 1, chain.ids[first + 1])

    def test_every_truncation_is_found(
        self, check: Callable[[bytes], VerifyResult], chain: Chain
    ) -> None:
        """Cut mid-line, the torn line is named; cut at a line end, the head names the loss."""
        rng = Random(5)
        ends = [sum(len(raw) for raw in chain.lines[:count]) for count in range(CHAIN_LENGTH)]
        for size in [*rng.sample(range(len(chain.data)), 60), *rng.sample(ends, 20), 0]:
            line, audit_id = first_bad(check(chain.data[:size]))
            assert line == chain.line_at(size)
            if size in ends:
                assert audit_id == chain.ids[-1]

    def test_every_insertion_is_found(
        self, check: Callable[[bytes], VerifyResult], chain: Chain
    ) -> None:
        """Garbage, a copied line or a well-sealed forgery inserted mid-chain is found."""
        rng = Random(6)
        for _ in range(40):
            at = rng.randrange(CHAIN_LENGTH - 1)
            other = rng.choice([i for i in range(CHAIN_LENGTH) if i != at])
            forged, _ = seal(record().to_dict(), at, orjson.loads(chain.lines[at])["prev"])
            for inserted, bad_line in [
                (b'{"note":"not an entry"}\n', at + 1),
                (chain.lines[other], at + 1),
                (forged, at + 2),  # it links: the entry it displaced no longer does
            ]:
                lines = [*chain.lines[:at], inserted, *chain.lines[at:]]
                line, _ = first_bad(check(b"".join(lines)))
                assert line == bad_line

    def test_every_edited_field_is_found(
        self, check: Callable[[bytes], VerifyResult], chain: Chain
    ) -> None:
        """An edited field is found at its line; resealed, at the next link or the head."""
        edits: list[tuple[str, Any]] = [
            ("served_tier", "central"),
            ("redactions", {}),
            ("model_sha256", "00" * 32),
            ("cache_of", new_audit_id()),
            ("reasons", ["forged"]),
            ("status", 500),
        ]
        rng = Random(7)
        for index in [*rng.sample(range(CHAIN_LENGTH), 30), CHAIN_LENGTH - 1]:
            key, value = rng.choice(edits)
            entry = orjson.loads(chain.lines[index])
            entry[key] = value
            edited = [*chain.lines[:index], canonical(entry) + b"\n", *chain.lines[index + 1 :]]
            assert first_bad(check(b"".join(edited))) == (index + 1, chain.ids[index])
            del entry["hash"]
            resealed, _ = seal(entry, entry.pop("seq"), entry.pop("prev"))
            edited[index] = resealed
            line, _ = first_bad(check(b"".join(edited)))
            assert line == min(index + 2, CHAIN_LENGTH)

    def test_damaged_head_file_is_reported(self, tmp_path: Path, chain: Chain) -> None:
        """A head file that is not one is a problem of its own, not a pass."""
        path = tmp_path / "log.jsonl"
        path.write_bytes(chain.data)
        head_path(path).write_bytes(b"{damaged")
        result = verify(path)
        assert result.problem is not None
        assert result.problem.line is None
        assert "head file" in str(result.problem)

    def test_missing_head_file_is_noted(self, tmp_path: Path, chain: Chain) -> None:
        """Without a head file the chain still verifies, with a note on what cannot be seen."""
        path = tmp_path / "log.jsonl"
        path.write_bytes(chain.data)
        result = verify(path)
        assert result.ok
        assert any("head file" in note for note in result.notes)


# -- restarts and torn tails -------------------------------------------------------------------


class TestRestart:
    def test_reopening_continues_the_chain(self, tmp_path: Path) -> None:
        """A second process (here: a second open) appends to the same chain."""
        path = tmp_path / "log.jsonl"
        write_log(path, 5)
        before = lines_of(path)
        write_log(path, 5)
        after = lines_of(path)
        assert after[:5] == before
        assert orjson.loads(after[5])["prev"] == orjson.loads(before[-1])["hash"]
        result = verify(path)
        assert result.ok, result.problem
        assert (result.entries, result.segments) == (10, 1)

    def test_torn_last_line_starts_a_new_segment(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A write cut short by a crash is reported, kept, and a marker continues the chain."""
        path = tmp_path / "log.jsonl"
        write_log(path, 5)
        torn = lines_of(path)[-1][:123]
        with path.open("ab") as file:
            file.write(torn)
        assert first_bad(verify(path))[0] == 6
        with caplog.at_level(logging.WARNING, logger="router.audit.log"):
            write_log(path, 2)
        assert "123 torn bytes" in caplog.text
        lines = lines_of(path)
        assert lines[5] == torn + b"\n"
        marker = orjson.loads(lines[6])
        assert (marker["kind"], marker["seq"], marker["torn"]["bytes"]) == ("segment", 5, 124)
        result = verify(path)
        assert result.ok, result.problem
        assert (result.entries, result.segments) == (8, 2)
        assert "torn bytes" in result.notes[0]

    def test_zeroed_tail_after_a_crash_is_kept_apart(self, tmp_path: Path) -> None:
        """The zeros a file system can leave after a crash become a described torn tail."""
        path = tmp_path / "log.jsonl"
        write_log(path, 3)
        with path.open("ab") as file:
            file.write(b"\x00" * 4096)
        write_log(path, 1)
        assert verify(path).ok

    def test_torn_first_write(self, tmp_path: Path) -> None:
        """A log whose very first write was torn starts over after the torn bytes."""
        path = tmp_path / "log.jsonl"
        path.write_bytes(b'{"api":"kserve-v2","cache":nu')
        write_log(path, 2)
        result = verify(path)
        assert result.ok, result.problem
        assert result.entries == 3

    def test_marker_without_its_torn_bytes_fails(self, tmp_path: Path) -> None:
        """Removing the torn bytes a marker describes is itself a detected change."""
        path = tmp_path / "log.jsonl"
        write_log(path, 3)
        with path.open("ab") as file:
            file.write(b'{"api":')
        write_log(path, 1)
        lines = lines_of(path)
        path.write_bytes(b"".join(lines[:3] + lines[4:]))
        assert first_bad(verify(path))[0] == 4

    def test_foreign_file_is_refused(self, tmp_path: Path) -> None:
        """A file without a single intact entry is not taken over."""
        path = tmp_path / "log.jsonl"
        path.write_bytes(b"name,email\nsomebody,somebody@example.org\n")
        with pytest.raises(AuditLogError, match="no intact audit entry"):
            AuditLog(path)
        assert path.read_bytes().startswith(b"name,email")

    def test_entries_lost_before_a_restart_are_recorded(self, tmp_path: Path) -> None:
        """With fsync 'never', a power cut can lose synced-by-nobody entries the head knew of:
        the verifier calls that truncation, and a restart records the loss in the chain."""
        path = tmp_path / "log.jsonl"
        write_log(path, 10, fsync="never")
        path.write_bytes(b"".join(lines_of(path)[:7]))
        assert first_bad(verify(path))[0] == 8
        write_log(path, 1)
        result = verify(path)
        assert result.ok, result.problem
        assert any("lost" in note for note in result.notes)

    def test_a_log_moved_away_without_its_head_is_noted_plainly(self, tmp_path: Path) -> None:
        """A rotation that leaves the head file behind starts the new chain with a note that
        names the entries the head knew (0 to 4), not 'entries after -1'."""
        path = tmp_path / "log.jsonl"
        write_log(path, 5)
        path.rename(tmp_path / "old.jsonl")
        write_log(path, 1)
        result = verify(path)
        assert result.ok, result.problem
        assert "entries 0 to 4 were lost" in result.notes[0]

    def test_second_writer_is_refused(self, tmp_path: Path) -> None:
        """Two writers would interleave two chains: the second one is refused."""
        path = tmp_path / "log.jsonl"
        with AuditLog(path), pytest.raises(AuditLogError, match="another writer"):
            AuditLog(path)


# -- fsync policy and write failures -----------------------------------------------------------


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The file name behind every os.fsync call, the real fsync still done."""
    calls: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        calls.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


class TestFsyncPolicy:
    def test_always_syncs_every_append(self, tmp_path: Path, synced: list[str]) -> None:
        """fsync 'always' really calls os.fsync once per append."""
        write_log(tmp_path / "log.jsonl", 3, fsync="always")
        assert synced.count("log.jsonl") == 3

    def test_never_syncs(self, tmp_path: Path, synced: list[str]) -> None:
        """fsync 'never' leaves it to the OS, even at close."""
        write_log(tmp_path / "log.jsonl", 3, fsync="never")
        assert "log.jsonl" not in synced

    def test_batch_syncs_once_per_interval_and_at_close(
        self, tmp_path: Path, synced: list[str]
    ) -> None:
        """fsync 'batch' with a long interval syncs once, at close."""
        with AuditLog(tmp_path / "log.jsonl", fsync="batch", batch_interval_ms=600_000) as log:
            for _ in range(3):
                log.append_sync(record())
            assert "log.jsonl" not in synced
        assert synced.count("log.jsonl") == 1

    async def test_flush_syncs_a_batch(self, tmp_path: Path, synced: list[str]) -> None:
        """A flush makes everything queued before it durable, whatever the interval."""
        log = AuditLog(tmp_path / "log.jsonl", fsync="batch", batch_interval_ms=600_000)
        for _ in range(3):
            await log.append(record())
        await log.flush()
        assert synced.count("log.jsonl") == 1
        await log.aclose()

    @pytest.mark.parametrize(("policy", "head_syncs"), [("always", 3), ("never", 0)])
    def test_the_head_file_is_synced_with_the_log(
        self, tmp_path: Path, synced: list[str], policy: str, head_syncs: int
    ) -> None:
        """The head is written (and synced) after each sync of the log, so a power cut cannot
        leave an empty head beside a synced log; with fsync 'never' neither is."""
        write_log(tmp_path / "log.jsonl", 3, fsync=policy)
        assert synced.count("log.jsonl.head.tmp") == head_syncs


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[AuditLog], None]:
    """Make the next write to a log's file write ten bytes, then fail with ENOSPC."""

    def arm(log: AuditLog) -> None:
        real = os.write
        target = log._fd

        def write(fd: int, data: Any) -> int:
            if fd != target:
                return real(fd, data)
            monkeypatch.setattr(os, "write", real)
            real(fd, bytes(data[:10]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "write", write)

    return arm


class TestWriteFailure:
    def test_partial_write_is_rolled_back(
        self, tmp_path: Path, full_disk: Callable[[AuditLog], None]
    ) -> None:
        """A failed write leaves no torn bytes behind: the chain goes on intact."""
        path = tmp_path / "log.jsonl"
        with AuditLog(path, fsync="never") as log:
            log.append_sync(record())
            size = path.stat().st_size
            full_disk(log)
            with pytest.raises(AuditLogError, match="No space left") as info:
                log.append_sync(record(request_id="secret-request"))
            assert "secret-request" not in str(info.value)
            assert path.stat().st_size == size
            log.append_sync(record())
        assert verify(path).entries == 2

    async def test_flush_reports_records_lost_by_the_writer(
        self, tmp_path: Path, full_disk: Callable[[AuditLog], None]
    ) -> None:
        """A write failure in the writer thread is counted and surfaces at the next flush."""
        log = AuditLog(tmp_path / "log.jsonl", fsync="never")
        full_disk(log)
        await log.append(record())
        with pytest.raises(AuditLogError, match="No space left"):
            await log.flush()
        assert log.failures == 1
        await log.append(record())
        await log.flush()
        await log.aclose()
        assert verify(log.path).entries == 1

    async def test_an_outage_is_logged_once_not_per_batch(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A full disk logs one error when records start to be lost and one line when writes
        succeed again, however many batches failed in between (the log may share the disk)."""
        log = AuditLog(tmp_path / "log.jsonl", fsync="never")
        real = os.write

        def full(fd: int, data: Any) -> int:
            if fd == log._fd:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, data)

        with caplog.at_level(logging.WARNING, logger="router.audit.log"):
            monkeypatch.setattr(os, "write", full)
            for _ in range(5):
                await log.append(record())
                with pytest.raises(AuditLogError):
                    await log.flush()
            monkeypatch.setattr(os, "write", real)
            await log.append(record())
            await log.flush()
            await log.aclose()
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 2, messages
        assert "No space left" in messages[0]
        assert "succeed again, after 5 records lost" in messages[1]
        assert log.failures == 5


# -- the async writer --------------------------------------------------------------------------


@pytest.fixture
def stalled_fsync(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[threading.Event, threading.Event]]:
    """os.fsync stalls until the second event is set (at the latest when the test ends); the
    first is set once one began."""
    entered, stuck = threading.Event(), threading.Event()
    real = os.fsync

    def slow_fsync(fd: int) -> None:
        entered.set()
        stuck.wait(30)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    yield entered, stuck
    stuck.set()


class TestAsyncWriter:
    async def test_concurrent_appends_keep_the_chain_valid(self, tmp_path: Path) -> None:
        """Many tasks through a small queue, and a thread writing directly, make one chain."""
        log = AuditLog(tmp_path / "log.jsonl", fsync="batch", batch_interval_ms=1, max_queue=8)
        records = [record(request_id=f"r{i}") for i in range(1000)]

        async def task(part: list[AuditRecord]) -> None:
            for entry in part:
                await log.append(entry)

        direct = [record(request_id=f"d{i}") for i in range(50)]

        def thread() -> None:
            for entry in direct:
                log.append_sync(entry)

        async with asyncio.TaskGroup() as group:
            for start in range(0, len(records), 25):
                group.create_task(task(records[start : start + 25]))
            group.create_task(asyncio.to_thread(thread))
        await log.flush()
        await log.aclose()
        result = verify(log.path)
        assert result.ok, result.problem
        assert result.entries == 1050
        written = [orjson.loads(raw)["id"] for raw in lines_of(log.path)]
        assert sorted(written) == sorted(r.id for r in records + direct)

    @pytest.mark.parametrize("policy", ["batch", "never"])
    async def test_a_record_is_in_the_file_when_append_returns(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str
    ) -> None:
        """The caller's record is written to the file before `append` returns, with the writer
        thread stalled: what a kill -9 leaves (the page cache) holds every record appended."""
        stalled = threading.Event()
        monkeypatch.setattr(Writer, "_handle", lambda *_: stalled.wait(30))
        log = AuditLog(tmp_path / "log.jsonl", fsync=policy, batch_interval_ms=1)
        try:
            entries = [record(request_id=f"r{i}") for i in range(3)]
            for entry in entries:
                await log.append(entry)
            written = [orjson.loads(raw)["id"] for raw in lines_of(log.path)]
            assert written == [entry.id for entry in entries]
        finally:
            stalled.set()
            monkeypatch.undo()
            await log.aclose()
        assert verify(log.path).entries == 3

    async def test_always_waits_for_the_sync_that_covers_the_record(
        self, tmp_path: Path, stalled_fsync: tuple[threading.Event, threading.Event]
    ) -> None:
        """fsync 'always': `append` returns only after an fsync begun after its write ended
        (a group commit: one fsync covers the records written while the last one ran)."""
        entered, stuck = stalled_fsync
        log = AuditLog(tmp_path / "log.jsonl", fsync="always")
        try:
            first = asyncio.ensure_future(log.append(record()))
            await asyncio.to_thread(entered.wait, 30)
            others = [asyncio.ensure_future(log.append(record())) for _ in range(3)]
            for _ in range(10):
                await asyncio.sleep(0.005)
            assert not any(task.done() for task in (first, *others))
            assert len(lines_of(log.path)) == 4  # written already, only the sync is waited for
        finally:
            stuck.set()
        await asyncio.wait_for(asyncio.gather(first, *others), 30)
        await log.aclose()
        assert verify(log.path).entries == 4

    async def test_a_busy_log_queues_appends_boundedly(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While another thread holds the log (its write stuck), appends on the loop neither
        block the loop nor return before their record is written: they wait in the bounded
        queue, later ones for a place, and all are written once it moves."""
        stuck, entered = threading.Event(), threading.Event()
        log = AuditLog(tmp_path / "log.jsonl", fsync="never", max_queue=2)
        real = os.write

        def slow_write(fd: int, data: Any) -> int:
            if fd == log._fd and threading.current_thread().name == "tool":
                entered.set()
                stuck.wait(30)
            return real(fd, data)

        tool = threading.Thread(target=log.append_sync, args=(record(),), name="tool")
        monkeypatch.setattr(os, "write", slow_write)
        try:
            tool.start()
            await asyncio.to_thread(entered.wait, 30)
            queued = [asyncio.ensure_future(log.append(record())) for _ in range(3)]
            for _ in range(20):
                await asyncio.sleep(0.005)  # the loop runs on meanwhile
            assert not any(task.done() for task in queued)
            assert log._writer._slots is not None
            assert log._writer._slots.semaphore.locked()  # two places taken, one waits
        finally:
            stuck.set()
            monkeypatch.setattr(os, "write", real)
        await asyncio.wait_for(asyncio.gather(*queued), 30)
        await asyncio.to_thread(tool.join, 30)
        await log.aclose()
        result = verify(log.path)
        assert result.ok, result.problem
        assert result.entries == 4

    async def test_a_hand_over_racing_with_close_is_refused_not_written_elsewhere(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A record handed to the writer thread while the log closes (after the open check,
        before the hand-over) is refused as closed: never written to the closed descriptor,
        whose number a file opened since may hold."""
        log = AuditLog(tmp_path / "log.jsonl", fsync="never")
        other = tmp_path / "other.txt"

        def closing_first(**fields: Any) -> writer_module._Item:
            log._lock.release()
            log.close()  # the whole close runs between the open check and the hand-over
            opened.append(os.open(other, os.O_WRONLY | os.O_CREAT, 0o600))  # the freed number
            monkeypatch.setattr(writer_module, "_Item", real_item)
            return real_item(**fields)

        real_item, opened = writer_module._Item, []
        monkeypatch.setattr(writer_module, "_Item", closing_first)
        log._lock.acquire()  # as if another thread wrote: the record is handed over
        try:
            with pytest.raises(AuditLogError, match="closed"):
                await log.append(record())
        finally:
            for fd in opened:
                os.close(fd)
        assert other.read_bytes() == b""
        assert verify(log.path).entries == 0

    async def test_a_flush_racing_with_close_returns(self, tmp_path: Path) -> None:
        """A flush that passed the open check as the log closed returns (the close wrote and
        synced everything) instead of waiting for a writer thread that is gone."""
        log = AuditLog(tmp_path / "log.jsonl", fsync="batch")
        await log.append(record())
        await log.aclose()
        assert await asyncio.wait_for(log._writer.flush(), LIMIT_S) is None
        assert verify(log.path).entries == 1

    async def test_append_after_close_fails(self, tmp_path: Path) -> None:
        """A closed log refuses records rather than dropping them silently."""
        log = AuditLog(tmp_path / "log.jsonl")
        await log.aclose()
        with pytest.raises(AuditLogError, match="closed"):
            await log.append(record())
        with pytest.raises(AuditLogError, match="closed"):
            log.append_sync(record())


# -- records, ids and digests ------------------------------------------------------------------


class TestRecord:
    def test_record_names_everything_a1_asks_for(self) -> None:
        """A1: site, tier, time, model + version + sha256, policy, redactions, cache origin,
        input and output digests, all in the record."""
        entry = record(cache="HIT", cache_of=new_audit_id(), entities={"EMAIL": 1, "CARD": 0})
        doc = entry.to_dict()
        assert set(doc) == {
            "kind", "id", "time", "site", "tier", "api", "status", "request_id", "tenant",
            "served_tier", "served_by", "model", "model_version", "model_sha256", "policy_revision",
            "reasons",
            "data_class", "entities", "redactions", "cache", "cache_of", "inputs", "output",
        }  # fmt: skip
        assert TIME.match(doc["time"])
        assert doc["entities"] == {"EMAIL": 1}

    def test_ids_are_unique_and_sort_by_time(self) -> None:
        """Ids made later sort later; many made at once do not collide."""
        assert new_audit_id(1) < new_audit_id(2) < new_audit_id(10**12) < new_audit_id(2**47)
        assert len({new_audit_id(5) for _ in range(10_000)}) == 10_000
        assert id_time(new_audit_id(1_700_000_000_123)) == "2023-11-14T22:13:20.123Z"
        with pytest.raises(ValueError, match="not an audit id"):
            id_time("not-an-id")

    def test_log_file_names_one_chain_per_worker(self, tmp_path: Path) -> None:
        """A folder holds one log per worker; a .jsonl path is the log itself."""
        assert log_file(tmp_path, "ship-7") == tmp_path / "ship-7.jsonl"
        assert log_file(tmp_path, "ship-7", 3) == tmp_path / "ship-7.3.jsonl"
        assert log_file(tmp_path / "a.jsonl", "ship-7", 3) == tmp_path / "a.jsonl"

    def test_settings_resolve_the_audit_path_next_to_the_config(self, tmp_path: Path) -> None:
        """audit.path named in a config file is relative to the file's folder."""
        config = tmp_path / "site.yaml"
        config.write_text("audit: {path: logs, fsync: always}\n", encoding="utf-8")
        settings = load_settings(config)
        assert (settings.audit.path, settings.audit.fsync) == (tmp_path / "logs", "always")
        config.write_text("audit: {fsync: never}\n", encoding="utf-8")
        assert load_settings(config).audit.path is None  # the state directory's audit/ folder


class TestDigester:
    def test_one_digest_per_leaf_and_per_tensor(self) -> None:
        """Strings are leaves; an array of numbers (a tensor) is one leaf."""
        doc = {"inputs": [{"name": "rgb", "data": [[0.1, 0.2, 0.3]]}], "parameters": {}}
        assert set(Digester(SECRET).fragments(doc)) == {
            "$.inputs[0].name",
            "$.inputs[0].data",
            "$.parameters",
        }

    def test_keys_that_are_not_schema_are_not_kept(self) -> None:
        """A key that may be personal data appears in paths only as a digest."""
        paths = Digester(SECRET).fragments({"by_email": {"jane.doe@example.org": "x"}})
        assert "jane.doe" not in "".join(paths)
        assert next(iter(paths)).startswith("$.by_email[#")

    def test_large_documents_are_digested_whole(self) -> None:
        """Past the fragment limit one digest stands for the whole document."""
        doc = {"texts": [f"t{i}" for i in range(300)]}
        assert list(Digester(SECRET).fragments(doc)) == ["$"]

    def test_binary_tensors_are_digested_per_input(self) -> None:
        """v2 binary data is split by binary_data_size; sizes that do not add up: whole."""
        doc = {"inputs": [{"parameters": {"binary_data_size": 3}}, {"parameters": {}}]}
        digester = Digester(SECRET)
        assert list(digester.tensors(doc, b"abc")) == ["$.inputs[0].binary"]
        assert list(digester.tensors(doc, b"abcd")) == ["$.binary"]

    def test_digests_are_bound_to_their_path(self) -> None:
        """The same value at two places gives two digests."""
        digests = Digester(SECRET).fragments({"a": "same", "b": "same"})
        assert digests["$.a"] != digests["$.b"]


# -- A5: no raw values, no dictionary hits -----------------------------------------------------


@dataclass(frozen=True)
class Sensitive:
    values: list[str]
    documents: list[dict[str, Any]]


@pytest.fixture(scope="module")
def sensitive() -> Sensitive:
    fake = Faker("en_US")
    fake.seed_instance(55)
    values = []
    documents = []
    for index in range(150):
        email, card = fake.email(), fake.credit_card_number()
        name, phone = fake.name(), fake.phone_number()
        canary = f"CANARY-{index:04d}-{fake.hexify('^^^^^^^^')}"
        values += [email, card, name, phone, canary]
        text = {"name": "text", "datatype": "BYTES", "shape": [2], "data": [email, name]}
        documents.append(
            {
                "inputs": [text],
                "parameters": {"card": card, "phone": phone, canary: "key"},
                "note": canary,
            }
        )
    return Sensitive(values, documents)


@pytest.fixture(scope="module")
def sensitive_log(tmp_path_factory: pytest.TempPathFactory, sensitive: Sensitive) -> Path:
    path = tmp_path_factory.mktemp("a5") / "log.jsonl"
    digester = Digester(SECRET)
    with AuditLog(path, fsync="never") as log:
        for doc, value in zip(sensitive.documents, sensitive.values, strict=False):
            log.append_sync(
                record(
                    inputs=digester.fragments(doc),
                    output=digester.digest("output", value.encode()),
                    entities={"EMAIL": 1, "CARD": 1, "PHONE": 1},
                    redactions={"EMAIL": 1, "CARD": 1},
                )
            )
    return path


def digests_in(path: Path) -> set[str]:
    found = set()
    for raw in lines_of(path):
        entry = orjson.loads(raw)
        found.update(entry["inputs"].values())
        found.add(entry["output"])
    return found


def guesses(value: str, paths: set[str]) -> Iterator[str]:
    """What an attacker without the secret can compute for a guessed value."""
    for form in (value.encode(), orjson.dumps(value)):
        yield hashlib.sha256(form).hexdigest()
        yield hmac.new(WRONG_SECRET, form, hashlib.sha256).hexdigest()
        wrong = Digester(WRONG_SECRET)  # the scheme exactly, with the wrong key
        yield wrong.digest("output", form)
        for path in paths:
            yield hashlib.sha256(path.encode() + b"\x00" + form).hexdigest()
            yield wrong.digest(path, form)


class TestNoRawData:
    def test_no_raw_value_lands_in_the_log(self, sensitive_log: Path, sensitive: Sensitive):
        """Canaries, e-mails, cards, names and phones planted in values and keys: none appears
        in the log or its head file, raw or JSON-escaped."""
        stored = sensitive_log.read_bytes() + head_path(sensitive_log).read_bytes()
        for value in sensitive.values:
            assert value.encode() not in stored
            assert orjson.dumps(value)[1:-1] not in stored
        assert b"CANARY" not in stored

    def test_dictionary_attack_finds_nothing(self, sensitive_log: Path, sensitive: Sensitive):
        """A5: the true values themselves, hashed plain or keyed with a wrong secret in every
        way the scheme could use: 0 hits among the log's digests."""
        stored = digests_in(sensitive_log)
        paths = {p for d in sensitive.documents for p in Digester(WRONG_SECRET).fragments(d)}
        hits = [v for v in sensitive.values if any(g in stored for g in guesses(v, paths))]
        assert hits == []

    def test_the_secret_holder_can_check_a_record(
        self, sensitive_log: Path, sensitive: Sensitive
    ) -> None:
        """With the site secret, a known input and output match the record's digests."""
        digester = Digester(SECRET)
        for raw, doc, value in zip(
            lines_of(sensitive_log), sensitive.documents, sensitive.values, strict=False
        ):
            entry = orjson.loads(raw)
            assert entry["inputs"] == digester.fragments(doc)
            assert entry["output"] == digester.digest("output", value.encode())


# -- show: provenance --------------------------------------------------------------------------


class TestShow:
    def test_cache_hit_leads_to_the_original_across_worker_logs(self, tmp_path: Path) -> None:
        """A hit recorded by one worker points at the record another worker wrote."""
        original = record(cache="MISS")
        hit = record(cache="HIT", cache_of=original.id)
        with AuditLog(log_file(tmp_path, "ship-7", 1)) as log:
            log.append_sync(original)
        with AuditLog(log_file(tmp_path, "ship-7")) as log:
            log.append_sync(record())
            log.append_sync(hit)
        provenance = show(tmp_path, hit.id)
        assert [r.entry["id"] for r in provenance.records] == [hit.id, original.id]
        assert [r.line for r in provenance.records] == [2, 1]
        assert all(r.intact for r in provenance.records)
        assert provenance.missing is None

    def test_missing_origin_is_named(self, tmp_path: Path) -> None:
        """An origin no log holds is reported, not skipped."""
        gone = new_audit_id()
        hit = record(cache="HIT", cache_of=gone)
        with AuditLog(tmp_path / "log.jsonl") as log:
            log.append_sync(hit)
        provenance = show(tmp_path / "log.jsonl", hit.id)
        assert (len(provenance.records), provenance.missing) == (1, gone)

    def test_cache_of_loop_ends(self, tmp_path: Path) -> None:
        """A record naming itself as its origin does not loop forever."""
        audit_id = new_audit_id()
        looped = record(id=audit_id, cache_of=audit_id)
        with AuditLog(tmp_path / "log.jsonl") as log:
            log.append_sync(looped)
        assert len(show(tmp_path / "log.jsonl", looped.id).records) == 1

    def test_unknown_id_finds_nothing(self, tmp_path: Path) -> None:
        """An id no log holds gives no records."""
        write_log(tmp_path / "log.jsonl", 3)
        assert show(tmp_path / "log.jsonl", new_audit_id()).records == ()

    def test_edited_record_is_shown_as_not_intact(self, tmp_path: Path) -> None:
        """show flags a record whose line fails its own hash."""
        path = tmp_path / "log.jsonl"
        ids = write_log(path, 3)
        lines = lines_of(path)
        entry = orjson.loads(lines[1])
        entry["served_tier"] = "central"
        lines[1] = canonical(entry) + b"\n"
        path.write_bytes(b"".join(lines))
        (located,) = show(path, ids[1]).records
        assert not located.intact
