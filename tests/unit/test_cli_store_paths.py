"""`layer-router check` refuses a spool or audit path `serve` could not open for writing (exit 2
naming the key and the path), as `serve` does, and leaves no trace of its probes."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from router.audit import AuditLog, AuditRecord
from router.cli import main
from router.spool import Spool


def checked(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    config = tmp_path / "site.yaml"
    config.write_text(text)
    code = main(["check", str(config)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("spool.path", "spool: {path: /proc/nope/spool.sqlite3}\n"),
        ("audit.path", "audit: {path: /proc/nope/audit}\n"),
        ("audit.path", "audit: {path: /proc/nope/trail.jsonl}\n"),
    ],
)
def test_a_store_under_an_unusable_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, text: str
) -> None:
    """A spool or audit log whose folder cannot be made (under /proc, where even root makes
    nothing) is exit 2 naming its key and path, not ok."""
    code, err = checked(tmp_path, text, capsys)
    assert code == 2
    assert key in err
    assert "/proc/nope/" in err


def test_a_store_under_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spool path whose parent is a regular file is refused, naming the file in the way."""
    (tmp_path / "plain").write_text("not a folder")
    code, err = checked(tmp_path, f"spool: {{path: {tmp_path}/plain/spool.sqlite3}}\n", capsys)
    assert code == 2
    assert "spool.path" in err
    assert f"{tmp_path}/plain is not a directory" in err


def test_an_audit_log_that_cannot_be_written_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing audit log path that cannot be opened for appending (here a folder named as
    the log file) is refused, as serve refuses it."""
    (tmp_path / "trail.jsonl").mkdir()
    code, err = checked(tmp_path, f"audit: {{path: {tmp_path}/trail.jsonl}}\n", capsys)
    assert code == 2
    assert "audit.path" in err
    assert f"{tmp_path}/trail.jsonl" in err


def test_every_workers_audit_log_is_probed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With two workers, the second worker's log (`<site>.1.jsonl`) that cannot be opened for
    appending is refused too, not only the first's."""
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "edge-local.1.jsonl").mkdir()
    text = f"server: {{workers: 2}}\naudit: {{path: {tmp_path}/audit}}\n"
    code, err = checked(tmp_path, text, capsys)
    assert code == 2
    assert f"{tmp_path}/audit/edge-local.1.jsonl" in err


def test_one_audit_file_for_two_workers_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit.path` naming one .jsonl file with two workers is a configuration error (serve's
    second worker could not open it), naming both keys."""
    text = f"server: {{workers: 2}}\naudit: {{path: {tmp_path}/trail.jsonl}}\n"
    code, err = checked(tmp_path, text, capsys)
    assert code == 2
    assert "audit.path" in err
    assert "server.workers is 2" in err


def test_usable_paths_pass_and_nothing_is_left_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Folders still missing under a writable one pass, and are not made; an existing log is
    left as it was; no probe file stays."""
    stores = tmp_path / "stores"
    stores.mkdir()
    log = stores / "trail.jsonl"
    with AuditLog(log, fsync="never") as audit_log:
        audit_log.append_sync(AuditRecord(site="s", tier="edge"))
    (stores / "trail.jsonl.head").unlink()
    kept = log.read_bytes()
    before = log.stat()
    text = f"spool: {{path: {tmp_path}/new/deeper/spool.sqlite3}}\naudit: {{path: {log}}}\n"
    code, err = checked(tmp_path, text, capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.yaml", "stores"]
    assert [p.name for p in stores.iterdir()] == ["trail.jsonl"]
    assert log.read_bytes() == kept
    assert log.stat().st_mtime_ns == before.st_mtime_ns


def test_a_dangling_symlinked_log_passes_and_its_target_is_not_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An audit log that is a symlink to a file still to be made (serve makes it) passes, and
    check does not make the target."""
    target = tmp_path / "logs" / "trail.jsonl"
    target.parent.mkdir()
    link = tmp_path / "trail.jsonl"
    link.symlink_to(target)
    code, err = checked(tmp_path, f"audit: {{path: {link}}}\n", capsys)
    assert code == 0, err
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to run as nobody"
)
def test_a_folder_that_cannot_be_looked_into_is_a_clear_refusal() -> None:
    """A spool under a folder the user may not search (run as nobody) is exit 2 naming the key
    and the reason, never a stack trace."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        root.chmod(0o755)
        (root / "locked").mkdir(mode=0o700)
        config = root / "site.yaml"
        config.write_text(f"spool: {{path: {root}/locked/sub/spool.sqlite3}}\n")
        config.chmod(0o644)
        code = "import sys; from router.cli import main; sys.exit(main(['check', sys.argv[1]]))"
        done = subprocess.run(
            [*AS_NOBODY, sys.executable, "-c", code, str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "LAYER_ROUTER_STATE_DIR": str(root / "state")},
            cwd=root,
        )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "spool.path" in done.stderr
    assert "Permission denied" in done.stderr


def test_a_collector_store_that_cannot_be_opened_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A central site's collector store (collector-<site>.sqlite3 in the state directory)
    that serve could not open (here a folder by that name) is exit 2 naming it, as serve
    refuses it, not ok."""
    monkeypatch.setenv("LAYER_ROUTER_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state" / "collector-hq.sqlite3").mkdir(parents=True)
    code, err = checked(tmp_path, "site: {id: hq, tier: central}\n", capsys)
    assert code == 2, err
    assert "spool.collect" in err
    assert f"{tmp_path}/state/collector-hq.sqlite3" in err


def test_a_site_that_does_not_collect_has_no_collector_store_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """spool.collect: false on a central site: no collector store is opened, none checked."""
    monkeypatch.setenv("LAYER_ROUTER_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state" / "collector-hq.sqlite3").mkdir(parents=True)
    text = "site: {id: hq, tier: central}\nspool: {collect: false}\n"
    code, err = checked(tmp_path, text, capsys)
    assert code == 0, err


def test_a_damaged_audit_log_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An existing audit log with no intact entry (damaged, or some other file), which serve
    refuses to continue, is exit 2 naming audit.path and why, not ok; the file is untouched."""
    log = tmp_path / "trail.jsonl"
    log.write_bytes(b"not an audit log\n")
    code, err = checked(tmp_path, f"audit: {{path: {log}}}\n", capsys)
    assert code == 2, err
    assert "audit.path" in err
    assert "no intact audit entry" in err
    assert log.read_bytes() == b"not an audit log\n"


@pytest.mark.parametrize("key", ["spool.path", "spool.collect"])
def test_a_store_from_a_later_release_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    key: str,
) -> None:
    """A spool or collector store whose layout a later release wrote, which serve refuses to
    open, is exit 2 naming the key and the version, not ok; no file is added beside it."""
    monkeypatch.setenv("LAYER_ROUTER_STATE_DIR", str(tmp_path / "state"))
    if key == "spool.path":
        path = tmp_path / "stores" / "spool.sqlite3"
        text = f"spool: {{path: {path}}}\n"
    else:
        path, text = tmp_path / "state" / "collector-hq.sqlite3", "site: {id: hq, tier: central}\n"
    path.parent.mkdir(exist_ok=True)
    Spool.open_sync(path).close_sync()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 9")
    raw.commit()
    raw.close()
    files = sorted(path.parent.iterdir())
    code, err = checked(tmp_path, text, capsys)
    assert code == 2, err
    assert key in err
    assert "layout (version 9) is newer" in err
    assert sorted(path.parent.iterdir()) == files


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop capabilities"
)
def test_a_state_directory_serve_cannot_store_its_bundle_in_is_refused() -> None:
    """With the audit trail off, a read-only state directory still stops serve (it stores the
    policy bundle there): check is exit 2 naming $LAYER_ROUTER_STATE_DIR and why, not ok."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "state").mkdir(mode=0o500)
        config = root / "site.yaml"
        config.write_text("audit: {enabled: false}\n")
        code = "import sys; from router.cli import main; sys.exit(main(['check', sys.argv[1]]))"
        without_dac = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
        done = subprocess.run(
            [*without_dac, sys.executable, "-c", code, str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "LAYER_ROUTER_STATE_DIR": str(root / "state")},
            cwd=root,
        )
        left = list((root / "state").iterdir())
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "$LAYER_ROUTER_STATE_DIR" in done.stderr
    assert "Permission denied" in done.stderr
    assert left == []
