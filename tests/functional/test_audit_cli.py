"""`layer-router audit verify` and `layer-router audit show` as real processes: exit codes and
messages operators script against (0 ok, 1 tampered or not found, 2 unreadable)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

import router
from router.audit import AuditLog, AuditRecord, log_file, new_audit_id

ROUTER_ROOT = Path(router.__file__).resolve().parents[1]
RUN_TIMEOUT_S = 60.0


# Root without the capabilities that let it read and search any folder: file modes apply to it.
WITHOUT_DAC = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop capabilities"
)


def audit(
    *args: str | Path, cwd: Path | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROUTER_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [*prefix, sys.executable, "-m", "router", "audit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=env,
        cwd=cwd,
        check=False,
    )


def record(**fields: Any) -> AuditRecord:
    return AuditRecord(site="ship-7", tier="edge", model="color_classifier", **fields)


def write(path: Path, *records: AuditRecord) -> None:
    with AuditLog(path, fsync="never") as log:
        for entry in records:
            log.append_sync(entry)


@pytest.fixture
def log(tmp_path: Path) -> tuple[Path, list[AuditRecord]]:
    """A five-entry log whose last record is a cache hit of the second."""
    records = [record() for _ in range(4)]
    records.append(record(cache="HIT", cache_of=records[1].id))
    path = tmp_path / "logs" / "ship-7.jsonl"
    write(path, *records)
    return path, records


class TestVerify:
    def test_intact_log_exits_0(self, log: tuple[Path, list[AuditRecord]]) -> None:
        """An untouched log: exit 0 and a one-line summary."""
        done = audit("verify", log[0])
        assert done.returncode == 0, done.stderr
        assert "ok:" in done.stdout
        assert "5 entries in 1 segment" in done.stdout

    def test_tampered_log_exits_1_naming_the_first_bad_entry(
        self, log: tuple[Path, list[AuditRecord]]
    ) -> None:
        """An edited field: exit 1, and the message names the line and the audit id."""
        path, records = log
        lines = path.read_bytes().splitlines(keepends=True)
        lines[2] = lines[2].replace(b'"served_tier":""', b'"served_tier":"central"')
        path.write_bytes(b"".join(lines))
        done = audit("verify", path)
        assert done.returncode == 1
        assert "TAMPERED" in done.stderr
        assert "line 3" in done.stderr
        assert records[2].id in done.stderr

    def test_deleted_line_exits_1(self, log: tuple[Path, list[AuditRecord]]) -> None:
        """A deleted line: exit 1 naming the entry that follows the gap."""
        path, records = log
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(lines[:1] + lines[2:]))
        done = audit("verify", path)
        assert done.returncode == 1
        assert "line 2" in done.stderr
        assert records[2].id in done.stderr
        assert "deleted" in done.stderr

    def test_folder_of_worker_logs(self, log: tuple[Path, list[AuditRecord]]) -> None:
        """A folder verifies every worker's log; one tampered log makes it exit 1."""
        path, _ = log
        other = log_file(path.parent, "ship-7", 1)
        write(other, record(), record())
        assert audit("verify", path.parent).returncode == 0
        other.write_bytes(other.read_bytes()[:-40])
        done = audit("verify", path.parent)
        assert done.returncode == 1
        assert str(other) in done.stderr
        assert f"ok: {path}" in done.stdout

    def test_crash_segment_is_a_note_not_a_failure(self, log: tuple[Path, list[AuditRecord]]):
        """After a torn tail and a restart the log verifies, with the break noted."""
        path, _ = log
        with path.open("ab") as file:
            file.write(b'{"api":"kse')
        write(path, record())
        done = audit("verify", path)
        assert done.returncode == 0, done.stderr
        assert "2 segments" in done.stdout
        assert "note:" in done.stderr
        assert "torn bytes" in done.stderr

    def test_unreadable_exits_2(self, tmp_path: Path) -> None:
        """A missing file or a folder without logs: exit 2."""
        missing = audit("verify", tmp_path / "nope.jsonl")
        assert missing.returncode == 2
        assert "cannot read" in missing.stderr
        empty = audit("verify", tmp_path)
        assert empty.returncode == 2
        assert "no audit logs" in empty.stderr

    @needs_root
    def test_a_folder_that_cannot_be_listed_is_unreadable(
        self, log: tuple[Path, list[AuditRecord]]
    ) -> None:
        """A folder of logs the user may not list is exit 2 with the reason (Permission
        denied), for verify and show alike, not 'no audit logs' or 'no audit record'."""
        folder = log[0].parent
        folder.chmod(0o300)
        try:
            verified = audit("verify", folder, prefix=WITHOUT_DAC)
            shown = audit("show", log[1][0].id, "--log", folder, prefix=WITHOUT_DAC)
        finally:
            folder.chmod(0o755)
        for done in (verified, shown):
            assert done.returncode == 2, done.stderr
            assert f"cannot read {folder}: Permission denied" in done.stderr
            assert "Traceback" not in done.stderr


class TestShow:
    def test_cache_hit_shows_its_origin(self, log: tuple[Path, list[AuditRecord]]) -> None:
        """A cache hit's record comes with the record of the answer's original generation."""
        path, records = log
        done = audit("show", records[4].id, "--log", path.parent)
        assert done.returncode == 0, done.stderr
        shown = orjson.loads(done.stdout)
        provenance = shown["provenance"]
        assert [p["record"]["id"] for p in provenance] == [records[4].id, records[1].id]
        assert [p["line"] for p in provenance] == [5, 2]
        assert provenance[0]["record"]["cache_of"] == records[1].id
        assert all(p["intact"] for p in provenance)
        assert shown["missing_origin"] is None

    def test_a_reader_that_leaves_early_gets_no_trace(
        self, log: tuple[Path, list[AuditRecord]]
    ) -> None:
        """`audit show ID | head -1`: output to a pipe whose reader has gone ends quietly
        with SIGPIPE's exit status (141), not a BrokenPipeError stack trace."""
        path, records = log
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the first write
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROUTER_ROOT), env.get("PYTHONPATH")]))
        try:
            done = subprocess.run(
                [sys.executable, "-m", "router", "audit", "show", records[4].id, "--log", path],
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=RUN_TIMEOUT_S,
                env=env,
                check=False,
            )
        finally:
            os.close(write_end)
        assert "Traceback" not in done.stderr
        assert "BrokenPipeError" not in done.stderr
        assert done.returncode == 141

    def test_unknown_id_exits_1(self, log: tuple[Path, list[AuditRecord]]) -> None:
        """An id no log holds: exit 1 and nothing on stdout."""
        done = audit("show", new_audit_id(), "--log", log[0])
        assert done.returncode == 1
        assert done.stdout == ""
        assert "no audit record" in done.stderr

    def test_missing_origin_exits_1(self, tmp_path: Path) -> None:
        """A hit whose origin no log holds is printed, and reported as incomplete."""
        hit = record(cache="HIT", cache_of=new_audit_id())
        write(tmp_path / "a.jsonl", hit)
        done = audit("show", hit.id, "--log", tmp_path / "a.jsonl")
        assert done.returncode == 1
        assert orjson.loads(done.stdout)["missing_origin"] == hit.cache_of
        assert "not found" in done.stderr

    def test_log_found_through_the_config(self, log: tuple[Path, list[AuditRecord]]) -> None:
        """Without --log, the config's audit.path (relative to the config file) is searched."""
        path, records = log
        config = path.parent.parent / "site.yaml"
        config.write_text("audit: {path: logs}\n", encoding="utf-8")
        done = audit("show", records[0].id, "--config", config)
        assert done.returncode == 0, done.stderr
        assert orjson.loads(done.stdout)["provenance"][0]["record"]["id"] == records[0].id

    def test_log_found_through_the_config_serve_reads(
        self, log: tuple[Path, list[AuditRecord]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without --config, $LAYER_ROUTER_CONFIG (the file `serve` and `check` read, the
        container's way) names the audit.path, not the embedded config's default."""
        path, records = log
        config = path.parent.parent / "site.yaml"
        config.write_text("audit: {path: logs}\n", encoding="utf-8")
        monkeypatch.setenv("LAYER_ROUTER_CONFIG", str(config))
        done = audit("show", records[0].id)
        assert done.returncode == 0, done.stderr
        assert orjson.loads(done.stdout)["provenance"][0]["record"]["id"] == records[0].id

    def test_bad_config_exits_2(self, tmp_path: Path) -> None:
        """A config with an unknown audit key: exit 2 naming the key."""
        config = tmp_path / "site.yaml"
        config.write_text("audit: {paht: logs}\n", encoding="utf-8")
        done = audit("show", new_audit_id(), "--config", config)
        assert done.returncode == 2
        assert "audit.paht" in done.stderr
