"""Bundle files in and out of folders and gzipped tarballs, with limits: a bundle is data from
the network, so only plain files with relative names are accepted, within a size cap."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import threading
from pathlib import Path, PurePosixPath

from router.errors import BundleRejected
from router.policy.signing import Files, shown

MAX_FILES = 1000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024


def read_folder(folder: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, bytes]:
    """Every regular file under `folder`. A symlink is followed only to a file inside the
    folder (a Kubernetes ConfigMap volume is made of them); one leading out is refused."""
    if not folder.is_dir():
        raise BundleRejected(f"not a folder: {folder}")
    root = folder.resolve()
    files: dict[str, bytes] = {}
    total = 0
    _listable(folder, folder)
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if relative.parts[0].startswith(".."):
            continue  # Kubernetes' atomic-writer internals (..data, ..2026_11_27...)
        if path.is_symlink() and not _inside(path.resolve(), root):
            raise BundleRejected(f"symbolic link out of the bundle: {relative}")
        if path.is_dir():
            _listable(path, folder)
        if not path.is_file():
            continue
        name = relative.as_posix()
        if "__pycache__" in name:
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleRejected(f"cannot read {relative}: {exc.strerror or exc}") from None
        total += len(data)
        _within_limits(len(files) + 1, total, max_bytes)
        files[name] = data
    return files


def _listable(path: Path, folder: Path) -> None:
    """rglob skips a folder it may not list, silently: a bundle read without its `cases/`
    (every case unrun, "0 policy cases passed") or without its manifest."""
    try:
        os.listdir(path)
    except OSError as exc:
        where = path.relative_to(folder).as_posix() if path != folder else str(folder)
        raise BundleRejected(f"cannot read {where}: {exc.strerror or exc}") from None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def pack(files: Files) -> bytes:
    """A reproducible tar.gz: sorted names, zero times and owners, so equal files give equal
    bytes (and equal ETags)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), mtime=0)


def unpack(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, bytes]:
    try:
        raw = _gunzip(data, max_bytes)
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            return _members(tar, max_bytes)
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile):
        raise BundleRejected("bundle is not a valid tar.gz archive") from None


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    # Read one byte past the cap: a small archive must not inflate into memory without bound.
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        raw = stream.read(max_bytes * 2 + 1)
    if len(raw) > max_bytes * 2:
        raise BundleRejected(f"bundle is larger than {max_bytes} bytes unpacked")
    return raw


def _members(tar: tarfile.TarFile, max_bytes: int) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    for member in tar:
        if member.isdir():
            continue
        if not member.isreg():
            raise BundleRejected(f"bundle member is not a plain file: {shown(member.name)}")
        name = _safe_name(member.name)
        total += member.size
        _within_limits(len(files) + 1, total, max_bytes)
        extracted = tar.extractfile(member)
        assert extracted is not None  # a regular member always has content
        files[name] = extracted.read()
    return files


def _safe_name(name: str) -> str:
    path = PurePosixPath(name.removeprefix("./"))
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BundleRejected(f"bundle member has an unsafe name: {shown(name)}")
    return path.as_posix()


def _within_limits(count: int, total: int, max_bytes: int) -> None:
    if count > MAX_FILES:
        raise BundleRejected(f"bundle has more than {MAX_FILES} files")
    if total > max_bytes:
        raise BundleRejected(f"bundle is larger than {max_bytes} bytes")


def write_folder(files: Files, folder: Path) -> None:
    """Write `files` into a new `folder` (which must not exist yet)."""
    folder.mkdir(parents=True)
    for name, data in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer: workers of one site may persist the same bundle at the same moment.
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)  # a full disk or a folder in the way leaves no litter
        raise
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
