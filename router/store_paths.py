"""Whether the files `serve` writes at start-up (the spool, the audit log, a central site's
collector store) could be made where the settings put them: `check` tries what `serve` needs
and leaves no trace (a folder still missing is not made, a probe file is removed), so a config
it passes is no config `serve` refuses for an unusable path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from router.audit import log_file
from router.errors import ConfigError
from router.resources import audit_path, state_dir
from router.settings import Settings


def check_store_paths(settings: Settings) -> None:
    """ConfigError naming the key and the path of the first store `serve` could not open
    for writing. Blocking (file system probes)."""
    spool = settings.spool.path
    if spool is None and settings.spool.collector_url:
        spool = state_dir() / "spool.sqlite3"
    if spool is not None:
        _check_writable("spool.path", spool)
    if settings.audit.enabled:
        _check_writable("audit.path", log_file(audit_path(settings.audit.path), settings.site.id))
    if settings.collects:  # its store has no key of its own: spool.collect turns it off
        _check_writable("spool.collect", state_dir() / f"collector-{settings.site.id}.sqlite3")


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
