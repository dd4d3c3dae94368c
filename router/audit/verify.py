"""Checking a log (every line sealed, every link in place, nothing missing at the end) and finding
a record with the records its answer came from."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from router.audit.chain import BadEntry, Entry, Head, open_entry, read_head
from router.audit.tail import TAIL_SCAN_BYTES

_ID_IN_LINE = re.compile(rb'"id":"([0-9A-HJKMNP-TV-Z]{26})"')
MAX_PROVENANCE = 16  # cache_of links followed at most (a loop would otherwise never end)


@dataclass(frozen=True, slots=True)
class Problem:
    """The first bad entry: its line (1-based; None for the head file) and, when it can still
    be read, its audit id."""

    line: int | None
    audit_id: str | None
    message: str

    def __str__(self) -> str:
        where = "head file" if self.line is None else f"line {self.line}"
        named = f" (audit id {self.audit_id})" if self.audit_id else ""
        return f"{where}{named}: {self.message}"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    path: Path
    entries: int
    segments: int
    problem: Problem | None
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(slots=True)
class _Damage:
    """A run of bad lines, acceptable only if a segment entry right after it describes it."""

    line: int
    offset: int
    reason: str
    audit_id: str | None
    size: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    def add(self, raw: bytes) -> None:
        self.size += len(raw)
        self.digest.update(raw)

    def described_by(self, entry: Entry) -> bool:
        torn = entry.get("torn")
        return (
            entry.get("kind") == "segment"
            and isinstance(torn, dict)
            and torn.get("offset") == self.offset
            and torn.get("bytes") == self.size
            and torn.get("sha256") == self.digest.hexdigest()
        )

    def problem(self) -> Problem:
        return Problem(self.line, self.audit_id, self.reason)


class _Walker:
    """Reads a log line by line, keeping only the chain's state and the first problem."""

    def __init__(self, head: Head | None) -> None:
        self.head = head
        self.line = self.offset = self.seq = 0
        self.prev: str | None = None
        self.segments = 1
        self.notes: list[str] = []
        self.damage: _Damage | None = None
        self.at_head: tuple[int, str, str] | None = None  # line, hash, id of the head's seq

    def feed(self, raw: bytes) -> Problem | None:
        self.line += 1
        start, self.offset = self.offset, self.offset + len(raw)
        entry, reason = _read(raw)
        if self.damage is not None:
            return self._after_damage(raw, entry)
        if entry is None:
            self.damage = _Damage(self.line, start, reason, _find_id(raw))
            self.damage.add(raw)
            return None
        return self._link(entry)

    def finish(self) -> Problem | None:
        if self.damage is not None:
            return self.damage.problem()
        if self.head is None:
            self.notes.append("no head file: entries cut from the end would go unnoticed")
            return None
        if self.head.seq >= self.seq:
            return Problem(
                self.line + 1,
                self.head.id,
                f"missing: the log ends after {self.seq} entries but its head file records "
                f"entry {self.head.seq}; entries were cut from the end (truncated)",
            )
        line, digest, audit_id = self.at_head or (None, "", None)
        if digest != self.head.hash:
            return Problem(line, audit_id, "differs from the head file's record of it (rewritten)")
        return None

    def _after_damage(self, raw: bytes, entry: Entry | None) -> Problem | None:
        assert self.damage is not None
        if entry is not None:
            if not self.damage.described_by(entry) or self._link(entry) is not None:
                return self.damage.problem()
            self.damage = None
            return None
        self.damage.add(raw)
        return self.damage.problem() if self.damage.size > TAIL_SCAN_BYTES + 1 else None

    def _link(self, entry: Entry) -> Problem | None:
        seq = entry["seq"]
        if entry["prev"] != self.prev or seq != self.seq:
            return Problem(self.line, entry["id"], _link_message(seq, self.seq, self.line - 1))
        if entry.get("kind") == "segment":
            problem = self._segment(entry)
            if problem is not None:
                return problem
        if self.head is not None and seq == self.head.seq:
            self.at_head = (self.line, entry["hash"], entry["id"])
        self.prev, self.seq = entry["hash"], seq + 1
        return None

    def _segment(self, entry: Entry) -> Problem | None:
        torn, lost = entry.get("torn"), entry.get("lost")
        if torn is not None and self.damage is None:
            return Problem(self.line, entry["id"], "describes torn bytes that are not before it")
        self.segments += 1
        if torn is not None:
            self.notes.append(
                f"line {self.line}: new segment after {torn['bytes']} torn bytes at offset "
                f"{torn['offset']} (a write cut short by a crash)"
            )
        if isinstance(lost, dict):
            self.notes.append(
                f"line {self.line}: new segment; entries {entry['seq']} to "
                f"{lost.get('head_seq')} were lost before a restart (not synced, or the log "
                "was moved away without its head file)"
            )
        return None


def verify(path: Path) -> VerifyResult:
    """Check one log file and its head file. OSError when the log cannot be read. A log being
    written may end in a line still in flight, reported as torn: verify a closed or copied log."""
    try:
        head = read_head(path)
    except BadEntry as exc:
        return VerifyResult(path, 0, 0, Problem(None, None, str(exc)))
    walker = _Walker(head)
    problem = None
    with path.open("rb") as lines:
        for raw in lines:
            problem = walker.feed(raw)
            if problem is not None:
                break
    if problem is None:
        problem = walker.finish()
    return VerifyResult(path, walker.seq, walker.segments, problem, tuple(walker.notes))


def _read(raw: bytes) -> tuple[Entry | None, str]:
    if not raw.endswith(b"\n"):
        return None, "the file ends inside this entry (truncated, or torn by a crash)"
    try:
        return open_entry(raw[:-1]), ""
    except BadEntry as exc:
        return None, str(exc)


def _find_id(raw: bytes) -> str | None:
    match = _ID_IN_LINE.search(raw)
    return match.group(1).decode() if match else None


def _link_message(found: int, expected: int, before: int) -> str:
    if found > expected:
        return f"entry {expected} is missing before it, which is entry {found} (deleted)"
    if found < expected:
        return f"it is entry {found}, out of place after entry {expected - 1} (reordered)"
    return (
        f"it does not follow the entry on line {before}: one of the two was replaced, or an "
        "entry was inserted"
    )


# -- finding records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Located:
    file: Path
    line: int
    entry: Entry
    intact: bool  # the line is a sealed entry (whether the chain around it holds is `verify`'s)


@dataclass(frozen=True, slots=True)
class Provenance:
    """A record, then the record its cached answer came from, and so on back to the original;
    `missing` names an origin no log holds."""

    records: tuple[Located, ...]
    missing: str | None = None


def log_files(path: Path) -> list[Path]:
    """A log file, or every `*.jsonl` log in a folder (one per worker). OSError when the
    folder cannot be listed (glob would call it empty)."""
    if not path.is_dir():
        return [path]
    return sorted(entry for entry in path.iterdir() if entry.name.endswith(".jsonl"))


def show(path: Path, audit_id: str) -> Provenance:
    """The record with this id and its cache origins, from a log file or a folder of them.
    OSError when a log cannot be read."""
    files = log_files(path)
    found: list[Located] = []
    wanted: str | None = audit_id
    while wanted is not None and len(found) < MAX_PROVENANCE:
        if any(located.entry.get("id") == wanted for located in found):
            break
        located = find(files, wanted)
        if located is None:
            return Provenance(tuple(found), missing=wanted if found else None)
        found.append(located)
        origin = located.entry.get("cache_of")
        wanted = origin if isinstance(origin, str) else None
    return Provenance(tuple(found))


def find(files: list[Path], audit_id: str) -> Located | None:
    needle = b'"id":"' + audit_id.encode() + b'"'
    for file in files:
        with file.open("rb") as lines:
            for number, raw in enumerate(lines, 1):
                located = _locate(file, number, raw, audit_id) if needle in raw else None
                if located is not None:
                    return located
    return None


def _locate(file: Path, number: int, raw: bytes, audit_id: str) -> Located | None:
    entry, _ = _read(raw)
    intact = entry is not None
    if entry is None:
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(entry, dict) or entry.get("id") != audit_id:
        return None
    return Located(file, number, entry, intact)
