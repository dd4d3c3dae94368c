"""Where an existing log's chain continues: its last intact entry, found from the end of the file
so that a restart costs the same however long the log has grown."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from router.audit.chain import AuditLogError, BadEntry, Entry, open_entry

# A crash tears at most the last write; anything longer than this without one intact entry is
# not a torn tail but a damaged or foreign file, which an operator should look at.
TAIL_SCAN_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Resume:
    seq: int  # the next entry's sequence number
    prev: str | None  # the last intact entry's hash
    last_id: str | None
    end: int  # offset just past the last intact entry
    size: int  # the file's size: bytes past `end` are a torn tail

    @property
    def torn(self) -> int:
        return self.size - self.end


def resume(fd: int) -> Resume:
    size = os.fstat(fd).st_size
    if size == 0:
        return Resume(0, None, None, 0, 0)
    start = max(0, size - TAIL_SCAN_BYTES)
    chunk = os.pread(fd, size - start, start)
    for first, last in _lines_backwards(chunk, whole=start == 0):
        try:
            entry = open_entry(chunk[first:last])
        except BadEntry:
            continue
        return Resume(entry["seq"] + 1, entry["hash"], entry["id"], start + last + 1, size)
    if start == 0 and _torn_first_write(chunk):
        return Resume(0, None, None, 0, size)
    raise AuditLogError(
        f"no intact audit entry in the last {len(chunk)} bytes of the log: it is damaged or "
        "not an audit log; move it aside to start a new one"
    )


def recent_records(path: Path, window_s: float, after: str | None = None) -> list[Entry]:
    """The answers' records made within `window_s` of the newest one (at most the log's last
    TAIL_SCAN_BYTES) and after the entry with id `after`, oldest first, as they were before
    sealing (no seq, prev or hash): what a process killed then may have written without its
    spool copy being committed yet."""
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        start = max(0, size - TAIL_SCAN_BYTES)
        chunk = os.pread(file.fileno(), size - start, start)
    found: list[Entry] = []
    newest: datetime | None = None
    for first, last in _lines_backwards(chunk, whole=start == 0):
        try:
            entry = open_entry(chunk[first:last])
            made = datetime.fromisoformat(entry["time"])
        except (BadEntry, KeyError, TypeError, ValueError):
            continue
        if after is not None and entry.get("id") == after:
            break  # copied before a clean stop
        if entry.get("kind") != "response":
            continue
        newest = newest or made
        if (newest - made).total_seconds() > window_s:
            break
        for sealing in ("seq", "prev", "hash"):
            del entry[sealing]
        found.append(entry)
    return found[::-1]


def _lines_backwards(chunk: bytes, *, whole: bool) -> Iterator[tuple[int, int]]:
    """(start, end) of each newline-terminated line, last first. The first line of a chunk that
    starts mid-file may be cut, so it is only offered when the chunk is the whole file."""
    end = chunk.rfind(b"\n")
    while end != -1:
        before = chunk.rfind(b"\n", 0, end)
        if before == -1 and not whole:
            return
        yield before + 1, end
        end = before


def _torn_first_write(chunk: bytes) -> bool:
    """A file that never got one whole entry: the start of one, or the zeros a file system can
    leave after a crash, not somebody else's file."""
    return chunk.startswith(b'{"') or chunk.lstrip(b"\x00") == b""


# Written at a clean stop, once every record's spool copy was committed: the newest entry's id.
COPIED_SUFFIX = ".copied"


def take_copied_mark(path: Path) -> str | None:
    """The id a clean stop marked as copied, removed as it is read: a run that dies before its
    own clean stop leaves no mark, and its successor copies the whole window again."""
    mark = path.with_name(path.name + COPIED_SUFFIX)
    try:
        text = mark.read_text(encoding="ascii").strip()
        mark.unlink()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def mark_copied(path: Path, last_id: str) -> None:
    mark = path.with_name(path.name + COPIED_SUFFIX)
    temporary = mark.with_name(mark.name + ".tmp")
    temporary.write_text(last_id + "\n", encoding="ascii")
    os.replace(temporary, mark)
