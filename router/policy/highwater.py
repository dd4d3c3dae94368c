"""The rollback guard: the highest bundle serial a site has activated, kept beside its last good
bundle, below which no signed bundle is accepted again (TUF's monotonic version). Without it,
whoever can answer the bundle URL (a stale mirror, a CDN, an attacker) could hand a site an
older bundle that is validly signed, with weaker rules, and the site would activate it.

A serial orders bundles; equal serials must mean equal content (the files' digests, the
signature aside, so re-signing the same files with another key is the same bundle). Serial 0
is a bundle without one: unversioned bundles replace each other freely, as before serials,
but once a site has activated serial 1 or higher it never goes back to an unversioned one."""

from __future__ import annotations

import fcntl
import logging
from dataclasses import dataclass
from pathlib import Path

import orjson

from router.errors import BundleRejected
from router.policy.archive import write_atomically

log = logging.getLogger(__name__)

HIGH_WATER = "high-water.json"


@dataclass(frozen=True, slots=True)
class Mark:
    serial: int
    content: str  # content_id of the bundle activated at that serial


class HighWater:
    """Blocking file I/O: call it off the event loop. Workers of one site share the file; each
    also remembers its own mark, so a deleted or lowered file never lowers a running process."""

    def __init__(self, store: Path) -> None:
        self.path = store / HIGH_WATER
        self._seen = self._read()  # from here on, deleting the file lowers nothing

    def current(self) -> Mark | None:
        """The higher of what this process activated and what the file says (another worker
        may have moved it on)."""
        return _higher(self._seen, self._read())

    def check(self, serial: int, content: str) -> None:
        """BundleRejected when a bundle with `serial` and `content` would roll the site back."""
        mark = self.current()
        if mark is None:
            return
        if serial < mark.serial:
            raise BundleRejected(
                f"rollback: serial {serial} is older than the active serial {mark.serial}"
            )
        if serial == mark.serial and serial > 0 and content != mark.content:
            raise BundleRejected(
                f"rollback: serial {serial} is already active with other content "
                "(changed content needs a higher serial)"
            )

    def record(self, serial: int, content: str) -> None:
        """Raise the mark to a bundle just activated (never lower it). OSError when the file
        cannot be written; the mark held in memory still guards this process."""
        mark = Mark(serial, content)
        self._seen = _higher(self._seen, mark)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Read, compare and write under a lock: a worker still activating an older serial
        # must not overwrite the newer mark another worker has just written.
        with open(self.path.with_name(HIGH_WATER + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            on_disk = self._read()
            if on_disk is None or serial > on_disk.serial:
                write_atomically(self.path, orjson.dumps({"serial": serial, "content": content}))

    def _read(self) -> Mark | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("policy high-water mark unreadable: %s", exc.strerror or exc)
            return None
        try:
            doc = orjson.loads(raw)
            serial, content = doc["serial"], doc["content"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            serial = content = None
        if type(serial) is not int or serial < 0 or not isinstance(content, str):
            # Unusable: the last good bundle's serial takes its place when the site starts.
            log.warning("policy high-water mark %s is malformed; ignored", self.path)
            return None
        return Mark(serial, content)


def _higher(a: Mark | None, b: Mark | None) -> Mark | None:
    if a is None or b is None:
        return a or b
    return b if b.serial > a.serial else a
