"""The chain's encoding, shared by the writer and the verifier: canonical JSON lines, each sealed
with the SHA-256 of its own content (which includes the previous line's hash), and the head file
that remembers the newest sealed entry."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

Entry = dict[str, Any]


class AuditLogError(Exception):
    """The log cannot be opened or written (held by another process, damaged beyond repair,
    disk full). Messages name files and positions, never content."""


class AuditLogHeld(AuditLogError):
    """Another writer holds the log (its lock): a site's next process takes the next file."""


class BadEntry(Exception):
    """A line that is not a sealed entry; the message says why (for the verifier's report)."""


def canonical(value: Any) -> bytes:
    """Compact JSON with sorted keys: one byte string per value, so a hash over it is stable."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def seal(body: Entry, seq: int, prev: str | None) -> tuple[bytes, str]:
    """The line (newline included) that appends `body` as entry `seq` after the entry whose hash
    is `prev`, and the new entry's own hash."""
    entry = {**body, "seq": seq, "prev": prev}
    digest = hashlib.sha256(canonical(entry)).hexdigest()
    entry["hash"] = digest
    return canonical(entry) + b"\n", digest


def open_entry(raw: bytes) -> Entry:
    """The entry a line (without its newline) holds, if the line is exactly a sealed entry:
    valid JSON, its hash over its content, and byte for byte the canonical encoding (so that no
    change can hide in escapes or spacing that parse to the same value)."""
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadEntry("not valid JSON (damaged or truncated)") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
        raise BadEntry("not an audit entry")
    stated = entry.pop("hash")
    if hashlib.sha256(canonical(entry)).hexdigest() != stated:
        raise BadEntry("its content does not match its hash (edited)")
    entry["hash"] = stated
    if canonical(entry) != raw:
        raise BadEntry("not in canonical form (bytes altered)")
    if not _well_formed(entry):
        raise BadEntry("lacks the id, seq or prev of an entry")
    return entry


def _well_formed(entry: Entry) -> bool:
    seq, prev = entry.get("seq"), entry.get("prev")
    return (
        isinstance(entry.get("id"), str)
        and isinstance(seq, int)
        and not isinstance(seq, bool)
        and seq >= 0
        and (prev is None or isinstance(prev, str))
    )


@dataclass(frozen=True, slots=True)
class Head:
    """The newest entry known to be written (and synced, unless fsync is 'never'). It can only
    lag the log, never lead it, so a log that ends before its head has lost entries."""

    seq: int
    hash: str
    id: str


def head_path(log: Path) -> Path:
    return log.with_name(log.name + ".head")


def read_head(log: Path) -> Head | None:
    """The log's head, or None when there is none; BadEntry when the head file is damaged."""
    try:
        raw = head_path(log).read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = orjson.loads(raw)
        head = Head(seq=doc["seq"], hash=doc["hash"], id=doc["id"])
    except (orjson.JSONDecodeError, TypeError, KeyError):
        raise BadEntry(f"the head file {head_path(log)} is damaged") from None
    if not (isinstance(head.seq, int) and isinstance(head.hash, str) and isinstance(head.id, str)):
        raise BadEntry(f"the head file {head_path(log)} is damaged")
    return head


def write_head(log: Path, head: Head, *, sync: bool = False) -> None:
    """Replace the head atomically: a crash leaves the old head or the new one, never a mix.
    `sync`: its bytes reach the disk before the rename does, so a power cut cannot leave an
    empty head file (which `audit verify` would have to call damaged) beside a synced log."""
    target = head_path(log)
    temporary = target.with_name(target.name + ".tmp")
    with open(temporary, "wb") as out:
        out.write(canonical({"seq": head.seq, "hash": head.hash, "id": head.id}))
        if sync:
            out.flush()
            os.fsync(out.fileno())
    os.replace(temporary, target)
