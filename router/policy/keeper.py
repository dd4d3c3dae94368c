"""Verify, materialise and remember policy bundles: a bundle is activated only after its
signature, its files, its serial and its content all check out; the last good one is kept on
disk so a site can start offline; every check, activation and rejection is counted for status."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from router.errors import BundleRejected, ConfigError
from router.policy.archive import unpack, write_atomically, write_folder
from router.policy.bundle import PolicyBundle, load_bundle
from router.policy.highwater import HighWater
from router.policy.signing import Files, digests, verify
from router.privacy import bundle_detectors

log = logging.getLogger(__name__)

LAST_GOOD = "last-good.tar.gz"
LAST_GOOD_META = "last-good.json"
# A writer killed mid-way leaves a staging folder or a temporary file; a live write takes
# milliseconds, but the store may be shared by workers: only what is this old is swept.
LEFTOVER_AGE_S = 3600.0


def content_id(files: Files) -> str:
    """Names and digests of the files (the signature aside): equal for equal bundles."""
    return hashlib.sha256(orjson.dumps(digests(files))).hexdigest()[:16]


@dataclass(slots=True)
class BundleState:
    """What status and metrics show about the policy bundle (times are Unix seconds)."""

    source: str  # "embedded", a folder, a path or a URL
    signatures_required: bool  # public keys are configured
    revision: str = ""
    serial: int = 0  # the active bundle's manifest serial (0: none)
    name: str = ""
    etag: str | None = None
    signed_by: str | None = None  # key id
    ready: bool = False  # a good bundle is active
    from_last_good: bool = False  # started on the copy kept on disk
    last_check: float | None = None
    last_activation: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    checks: int = 0
    not_modified: int = 0
    activations: int = 0
    rejections: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rejected(self, reason: str) -> None:
        self.rejections += 1
        self.last_error = reason
        self.last_error_at = time.time()

    def activated(self, bundle: PolicyBundle, etag: str | None, keyid: str | None) -> None:
        self.activations += 1
        self.revision, self.name = bundle.revision, bundle.manifest.name
        self.serial = bundle.manifest.serial
        self.etag, self.signed_by, self.ready = etag, keyid, True
        self.last_activation = time.time()


class BundleKeeper:
    """Blocking work (hashing, file I/O, YAML): call it off the event loop.

    The rollback guard applies when signatures are required: a serial is only worth what the
    signature over the manifest makes it. An unsigned local folder is whatever its editor
    wrote (going back to an older file is how one undoes a mistake there), so no serial is
    enforced or remembered for it."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey], store: Path) -> None:
        self.keys = keys
        self.store = store
        self.high_water = HighWater(store) if keys else None
        sweep_leftovers(store, time.time())

    def accept(self, files: Files) -> tuple[PolicyBundle, str | None]:
        """The loaded bundle and the key that signed it; BundleRejected when it must not be
        used (bad signature or content, or older than a bundle this site has activated)."""
        keyid = verify(files, self.keys) if self.keys else None
        content = content_id(files)
        try:
            folder = self._materialise(files, content)
        except OSError as exc:
            where = exc.filename or self.store  # the operator has a folder to fix
            raise BundleRejected(
                f"cannot store the bundle in {where}: {exc.strerror or exc} (the state "
                "directory, $LAYER_ROUTER_STATE_DIR, must be a writable folder)"
            ) from None
        try:
            bundle = load_bundle(folder)
            if self.high_water is not None:
                self.high_water.check(bundle.manifest.serial, content)
            # Compiled here, off the loop: a pattern RE2 refuses rejects the bundle, and the
            # generation built from it finds the detectors already compiled.
            bundle_detectors(bundle)
            return bundle, keyid
        except BundleRejected:
            _discard(folder)  # never to be loaded: one folder per rejected edit otherwise
            raise
        except ConfigError as exc:
            _discard(folder)
            where = Path(exc.source)
            name = where.relative_to(folder) if where.is_relative_to(folder) else where.name
            # Cross-file problems are the folder's and name their file themselves: no "." in front.
            prefix = "" if name == Path(".") else f"{name}: "
            raise BundleRejected(prefix + "; ".join(exc.problems)) from None

    def _materialise(self, files: Files, content: str) -> Path:
        """The verified bytes in a folder of our own, named by content: what is loaded is what
        was verified, whatever happens to the source afterwards."""
        folder = self.store / f"bundle-{content}"
        if folder.is_dir() and not _holds(folder, files):
            # A folder left from an earlier run is only a cache of verified bytes: a power cut
            # can leave it with empty files (they were never synced), a hand can edit it. What
            # it holds now is not what was verified, so it is written again.
            log.warning(
                "policy bundle folder %s differs from its verified files: rewritten", folder
            )
            _discard(folder)
        if not folder.is_dir():
            # Several routers (workers, test sites) may share the store: stage privately.
            self.store.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.store)) / "bundle"
            try:
                write_folder(files, staging)
                staging.rename(folder)
            except OSError:
                if not folder.is_dir():  # not someone else's identical copy: a real failure
                    raise
            finally:
                shutil.rmtree(staging.parent, ignore_errors=True)
        return folder

    def activated(self, bundle: PolicyBundle, content: str) -> None:
        """Remember that `bundle` (of content id `content`) is active: the rollback guard's
        mark rises to its serial. OSError when that cannot be written."""
        if self.high_water is not None:
            self.high_water.record(bundle.manifest.serial, content)

    def superseded(self, bundle: PolicyBundle) -> bool:
        """A newer serial is already marked (another worker of the site moved on while this
        one activated `bundle`): keeping `bundle` as last good would make it one the site
        refuses to start on."""
        mark = self.high_water.current() if self.high_water is not None else None
        return mark is not None and mark.serial > bundle.manifest.serial

    def persist(self, archive: bytes, etag: str | None, keep: Path) -> None:
        write_atomically(self.store / LAST_GOOD, archive)
        write_atomically(self.store / LAST_GOOD_META, orjson.dumps({"etag": etag}))
        self._prune(keep)

    def _prune(self, keep: Path) -> None:
        """Drop materialised bundles other than the active one (the active one stays loaded
        in memory; its folder only serves `check`-style reads of its cases)."""
        for folder in self.store.glob("bundle-*"):
            if folder != keep:
                shutil.rmtree(folder, ignore_errors=True)

    def last_good(self) -> tuple[Files, bytes, str | None] | None:
        """The persisted last good bundle, or None when there is none (or it is unreadable)."""
        try:
            archive = (self.store / LAST_GOOD).read_bytes()
            meta = orjson.loads((self.store / LAST_GOOD_META).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        try:
            files = unpack(archive)
        except BundleRejected as exc:
            log.warning("last good policy bundle on disk is unusable: %s", exc.reason)
            return None
        etag = meta.get("etag") if isinstance(meta, dict) else None
        return files, archive, etag if isinstance(etag, str) else None


def _holds(folder: Path, files: Files) -> bool:
    """Whether `folder` holds exactly `files`, byte for byte, as regular files."""
    try:
        found = set()
        for path in folder.rglob("*"):
            if path.is_symlink():
                return False
            if path.is_file():
                found.add(path.relative_to(folder).as_posix())
        if found != set(files):
            return False
        return all((folder / name).read_bytes() == data for name, data in files.items())
    except OSError:
        return False


def _discard(folder: Path) -> None:
    """Move `folder` out of the way at once (another worker may be rewriting it too), then
    delete it."""
    trash = Path(tempfile.mkdtemp(prefix=".discard-", dir=folder.parent))
    try:
        folder.rename(trash / folder.name)
    except FileNotFoundError:
        pass  # another worker moved it first
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def sweep_leftovers(store: Path, now: float) -> None:
    """Staging folders and temporary files at least LEFTOVER_AGE_S old: what writers killed
    mid-way (a `kill -9` during an activation) left in the store."""
    try:
        entries = list(store.iterdir())
    except OSError:
        return  # no store yet
    for entry in entries:
        if not (entry.name.startswith(".staging-") or entry.name.endswith(".tmp")):
            continue
        try:
            if now - entry.lstat().st_mtime < LEFTOVER_AGE_S:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:
            log.warning("policy store: cannot remove leftover %s: %s", entry, exc.strerror)
