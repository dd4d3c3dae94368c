"""Which settings a hot reload applies, which changed ones wait for a restart, and how it
tells that a model repository changed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from router.settings import Settings

# Everything else needs a restart: listeners, workers, stores (cache, spool, audit), the policy
# source and keys. The policy's content reloads from the configured source.
RELOADABLE: dict[str, tuple[str, ...]] = {
    "routing": (
        "kserve_v2_budget_ms",
        "openai_budget_ms",
        "local_max_payload_bytes",
        "idempotent_paths",
        "offline",
        "models",
    ),
    "models": ("repository", "max_queue_size", "inline_max_us", "execution_providers"),
    # Sites come and go, and keys rotate, without a restart of the central router (a reload
    # hook in router.stores gives the collector its new guard and its new retention).
    "spool": ("collector_sites", "collector_retention_s", "collector_max_bytes"),
}
# Sections replaced whole: the upstream registry re-plans its clusters (a reload hook).
RELOADABLE_SECTIONS = frozenset({"upstreams"})


def restart_only_changes(running: Settings, new: Settings) -> list[str]:
    """Dotted keys that differ between `running` and `new` and need a restart to apply."""
    old_doc, new_doc = running.model_dump(mode="json"), new.model_dump(mode="json")
    changed = []
    for section in sorted(old_doc.keys() | new_doc.keys()):
        a, b = old_doc.get(section), new_doc.get(section)
        if a == b or section in RELOADABLE_SECTIONS:
            continue
        reloadable = RELOADABLE.get(section, ())
        if not isinstance(a, dict) or not isinstance(b, dict):
            changed.append(section)
            continue
        changed += [
            f"{section}.{key}"
            for key in sorted(a.keys() | b.keys())
            if key not in reloadable and a.get(key) != b.get(key)
        ]
    return changed


def applied(running: Settings, new: Settings) -> Settings:
    """`running` with the reloadable keys of `new`."""
    update: dict[str, Any] = {section: getattr(new, section) for section in RELOADABLE_SECTIONS}
    for section, keys in RELOADABLE.items():
        values = {key: getattr(getattr(new, section), key) for key in keys}
        update[section] = getattr(running, section).model_copy(update=values)
    return running.model_copy(update=update)


def repository_fingerprint(path: Path) -> str:
    """Names, sizes, modification times and identities of every file: cheap, and changes when
    a model file is replaced or a version added. The inode and change time catch a file
    replaced by one of the same size whose modification time was kept (cp -p, rsync -a,
    tar x of a same-shaped retrain): no tool can set those. Folders that are symbolic links
    are walked into (the loader follows them too: a model or version folder re-pointed to a
    new release is a change), each folder once; a folder or file gone while it is walked is
    left out (the next look sees the repository as it is then)."""
    digest = hashlib.sha256()
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(path, followlinks=True):
        try:
            here = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (here.st_dev, here.st_ino) in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add((here.st_dev, here.st_ino))
        dirs.sort()
        for name in sorted(files):
            file = Path(folder, name)
            try:
                stat = file.stat()
            except OSError:  # a dangling link, or gone since the folder was listed
                continue
            digest.update(
                f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0"
                f"{stat.st_ino}\0{stat.st_ctime_ns}\n".encode()
            )
    return digest.hexdigest()
