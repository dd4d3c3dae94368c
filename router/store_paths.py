"""Whether the files `serve` writes at start-up (the spool, the audit log, a central site's
collector store) could be made where the settings put them: `check` tries what `serve` needs
and leaves no trace (a folder still missing is not made, a probe file is removed), so a config
it passes is no config `serve` refuses for an unusable path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from router.audit import AuditLogError, log_file
from router.audit.tail import resume
from router.errors import ConfigError
from router.policy.distribution import site_store
from router.resources import audit_path, state_dir
from router.settings import Settings
from router.spool.schema import LAYOUT_VERSION


def check_store_paths(settings: Settings) -> None:
    """ConfigError naming the key and the path of the first store `serve` could not open
    for writing. Blocking (file system probes)."""
    spool = settings.spool.path
    if spool is None and settings.spool.collector_url:
        spool = state_dir() / "spool.sqlite3"
    if spool is not None:
        _check_writable("spool.path", spool)
        _check_layout("spool.path", spool)
    if settings.audit.enabled:
        folder = audit_path(settings.audit.path)
        for worker in range(settings.server.workers):  # each worker opens its own chain
            log = log_file(folder, settings.site.id, worker)
            _check_writable("audit.path", log)
            _check_resumable("audit.path", log)
    if settings.collects:  # its store has no key of its own: spool.collect turns it off
        store = state_dir() / f"collector-{settings.site.id}.sqlite3"
        _check_writable("spool.collect", store)
        _check_layout("spool.collect", store)
    # Every start stores its policy bundle there (the embedded one too): no key names it.
    bundles = site_store(settings)
    problem = _problem(Path(os.path.realpath(bundles)) / ".layer-router-check")
    if problem:
        raise ConfigError(
            "$LAYER_ROUTER_STATE_DIR",
            [f"{bundles} cannot hold the policy bundle serve stores there: {problem}"],
        )


def _check_resumable(key: str, path: Path) -> None:
    """serve continues an existing log's chain from its last intact entry: a log without one
    (damaged, or not an audit log) stops it, so it fails the check too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # none yet (serve makes it); unreadable ones were refused as not writable
    try:
        resume(fd)
    except AuditLogError as exc:
        raise ConfigError(key, [f"{path}: {exc}"]) from None
    finally:
        os.close(fd)


# SQLite's file header: its magic, and the user_version (where a store keeps its layout) as a
# big-endian 32-bit number at offset 60. Read from the file itself, because even a read-only
# SQLite connection to a WAL file leaves -wal and -shm files behind.
_SQLITE_MAGIC = b"SQLite format 3\x00"
_USER_VERSION = slice(60, 64)


def _check_layout(key: str, path: Path) -> None:
    """A store written by a later release stops serve (its rows may not fit this code); a
    damaged one does not (serve moves it aside), nor does one it cannot read here."""
    try:
        with open(path, "rb") as file:
            header = file.read(100)
    except OSError:
        return
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        return
    version = int.from_bytes(header[_USER_VERSION], "big")
    if version > LAYOUT_VERSION:
        raise ConfigError(
            key,
            [
                f"{path}: its layout (version {version}) is newer than this release's "
                f"({LAYOUT_VERSION}): run the release that wrote it, or move the file aside"
            ],
        )


def _check_writable(key: str, path: Path) -> None:
    # A symlink's target is what serve opens: appending to a dangling one would make it.
    problem = _problem(Path(os.path.realpath(path)))
    if problem:
        raise ConfigError(key, [f"{path} cannot be opened for writing: {problem}"])


def _problem(path: Path) -> str:
    """Why `path` could not be created or written (empty: it could). Its folder, when missing,
    must be one `mkdir -p` could make: its nearest existing parent a writable directory."""
    folder = path.parent
    existing = folder
    try:
        # exists() raises for a folder the user may not search (EACCES): refused, not a trace.
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"{existing} is not a directory"
        if existing != folder:
            # Tried, not asked of os.access: root passes that for /proc and read-only mounts.
            with tempfile.TemporaryDirectory(dir=existing, prefix=".layer-router-check-"):
                pass
            return ""
        with tempfile.TemporaryFile(dir=folder, prefix=".layer-router-check-"):
            pass
        if path.exists():
            # Opened to append, nothing written: its content and times stay as they were.
            with open(path, "ab"):
                pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return ""
