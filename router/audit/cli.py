"""`layer-router audit verify PATH` and `layer-router audit show AUDIT_ID`.

Exit codes, for scripts: 0 ok; 1 tampered (verify) or not found / provenance incomplete (show);
2 unreadable (a file that cannot be read, a bad config).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from router.audit.verify import Provenance, log_files, show, verify
from router.errors import ConfigError
from router.resources import audit_path
from router.settings import load_settings


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    audit = commands.add_parser("audit", help="verify the audit trail; show a record's provenance")
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    check = actions.add_parser(
        "verify", help="check a log's hash chain (exit 1: tampered, 2: unreadable)"
    )
    check.add_argument("path", type=Path, help="an audit log file, or a folder of them")
    find = actions.add_parser(
        "show", help="print a record and, for a cached answer, the records it came from"
    )
    find.add_argument("audit_id")
    find.add_argument("--log", type=Path, help="log file or folder (default: the config's)")
    find.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("LAYER_ROUTER_CONFIG") or None,
        help="site config YAML, for its audit.path (default: $LAYER_ROUTER_CONFIG, as serve)",
    )


def run(args: argparse.Namespace) -> int:
    if args.audit_command == "verify":
        return verify_command(args.path)
    return show_command(args.audit_id, args.log, args.config)


def verify_command(path: Path) -> int:
    try:
        files = log_files(path)
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not files:
        print(f"error: no audit logs (*.jsonl) in {path}", file=sys.stderr)
        return 2
    return max(_verify_one(file) for file in files)


def _verify_one(file: Path) -> int:
    try:
        result = verify(file)
    except OSError as exc:
        print(f"error: cannot read {file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if result.problem is not None:
        print(f"TAMPERED: {file}: {result.problem}", file=sys.stderr)
        return 1
    for note in result.notes:
        print(f"note: {file}: {note}", file=sys.stderr)
    segments = "segment" if result.segments == 1 else "segments"
    print(f"ok: {file}: {result.entries} entries in {result.segments} {segments}")
    return 0


def show_command(audit_id: str, log: Path | None, config: Path | None) -> int:
    if log is None:
        try:
            log = audit_path(load_settings(config).audit.path)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        provenance = show(log, audit_id)
    except OSError as exc:
        print(f"error: cannot read {exc.filename or log}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not provenance.records:
        print(f"error: no audit record {audit_id} in {log}", file=sys.stderr)
        return 1
    print(orjson.dumps(_document(audit_id, provenance), option=orjson.OPT_INDENT_2).decode())
    return _complaints(provenance)


def _document(audit_id: str, provenance: Provenance) -> dict[str, Any]:
    return {
        "audit_id": audit_id,
        "provenance": [
            {"file": str(r.file), "line": r.line, "intact": r.intact, "record": r.entry}
            for r in provenance.records
        ],
        "missing_origin": provenance.missing,
    }


def _complaints(provenance: Provenance) -> int:
    code = 0
    for located in provenance.records:
        if not located.intact:
            print(
                f"warning: {located.file} line {located.line} fails its hash check: "
                "run `layer-router audit verify`",
                file=sys.stderr,
            )
            code = 1
    if provenance.missing is not None:
        print(f"error: origin record {provenance.missing} (cache_of) not found", file=sys.stderr)
        code = 1
    return code
