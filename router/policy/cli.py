"""`layer-router bundle keygen|build|sign|verify`: make and check signed policy bundles.

    layer-router bundle keygen keys/site          # keys/site.key (private), keys/site.pub
    layer-router bundle build policies/default -o bundle.tar.gz --signing-key keys/site.key
    layer-router bundle sign bundle.tar.gz --signing-key keys/site.key   # (re-)sign in place
    layer-router bundle sign old.tar.gz --serial 8 --signing-key keys/site.key -o rollback.tar.gz
    layer-router bundle verify bundle.tar.gz --public-key keys/site.pub

Exit codes: 0 ok; 1 a bundle that fails verification; 2 unreadable input or a bad key.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from router.errors import BundleRejected, ConfigError
from router.flags import decimal
from router.policy.archive import pack, read_folder, unpack, write_atomically
from router.policy.keeper import BundleKeeper
from router.policy.signing import (
    SIGNATURES_FILE,
    generate_keypair,
    load_private_key,
    load_public_keys,
    sign,
)

SERIAL_LINE = re.compile(rb"^serial[ \t]*:.*$", re.MULTILINE)


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    bundle = commands.add_parser("bundle", help="build, sign and verify policy bundles")
    actions = bundle.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    keygen = actions.add_parser("keygen", help="write an Ed25519 key pair PREFIX.key, PREFIX.pub")
    keygen.add_argument("prefix", type=_prefix, help="e.g. keys/site: keys/site.key, .pub")
    build = actions.add_parser("build", help="pack a bundle folder into a .tar.gz")
    build.add_argument("folder", type=Path)
    build.add_argument("-o", "--output", type=_output, required=True)
    build.add_argument("--signing-key", type=Path, help="sign with this private key")
    build.add_argument("--serial", type=_serial, help="set the manifest's serial to N first")
    signer = actions.add_parser("sign", help="sign a bundle .tar.gz (replaces any signature)")
    signer.add_argument("bundle", type=Path)
    signer.add_argument("--signing-key", type=Path, required=True)
    signer.add_argument("-o", "--output", type=_output, help="default: overwrite the input")
    signer.add_argument("--serial", type=_serial, help="set the manifest's serial to N first")
    check = actions.add_parser("verify", help="check a bundle's signature and content")
    check.add_argument("bundle", type=Path, help="a .tar.gz or a bundle folder")
    check.add_argument("--public-key", type=Path, action="append", default=[], required=True)


def run(args: argparse.Namespace) -> int:
    try:
        if args.bundle_command == "keygen":
            secret, public = generate_keypair(args.prefix)
            print(f"wrote {secret} (private: keep it secret) and {public}")
            return 0
        if args.bundle_command == "build":
            files = _bundle_files(read_folder(args.folder), args.folder, args.serial)
            return _write(files, args.output, args.signing_key)
        if args.bundle_command == "sign":
            files = _bundle_files(_unpacked(args.bundle), args.bundle, args.serial)
            return _write(files, args.output or args.bundle, args.signing_key)
        return _verify(args.bundle, tuple(args.public_key))
    except BundleRejected as exc:
        print(f"error: {exc.reason}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileExistsError as exc:
        print(f"error: {exc.filename}: already exists (not overwritten)", file=sys.stderr)
        return 2
    except OSError as exc:  # an output folder that cannot be written, a full disk
        # os.replace names the temporary file first and the operator's output second.
        print(f"error: {exc.filename2 or exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2


def _bundle_files(files: dict[str, bytes], source: Path, serial: int | None) -> dict[str, bytes]:
    """What to sign: no old signature, the serial set; refused unless it is a bundle at all."""
    if "manifest.yaml" not in files:
        raise BundleRejected(f"not a policy bundle: no manifest.yaml in {source}")
    return _with_serial(_without_signature(files), serial)


def _without_signature(files: dict[str, bytes]) -> dict[str, bytes]:
    files.pop(SIGNATURES_FILE, None)
    return files


def _prefix(text: str) -> Path:
    # Path("keys/") is "keys": the pair would land beside the folder the operator meant.
    if text.endswith("/") or Path(text).name in ("", ".", ".."):
        raise ValueError(text)
    return Path(text)


_prefix.__name__ = "key prefix (a file name stem such as keys/site)"


def _output(text: str) -> Path:
    if text.endswith("/") or Path(text).name in ("", ".", ".."):
        raise ValueError(text)  # a folder, not the archive's file name
    return Path(text)


_output.__name__ = "output file (such as plant.tar.gz)"


def _serial(text: str) -> int:
    value = decimal(text)
    if not 0 <= value < 2**63:
        raise ValueError(text)
    return value


_serial.__name__ = "serial"  # argparse: "invalid serial value: '-1'"


def _with_serial(files: dict[str, bytes], serial: int | None) -> dict[str, bytes]:
    """`files` with the manifest's top-level `serial:` set to `serial` (None: as it is). The
    manifest is edited as text, so its comments and layout stay the author's."""
    if serial is None:
        return files
    manifest = files.get("manifest.yaml")
    if manifest is None:
        raise BundleRejected("not a policy bundle: manifest.yaml is missing")
    line = b"serial: %d" % serial
    # A top-level key starts in column 0; a folded or literal block ends before such a line.
    edited, count = SERIAL_LINE.subn(line, manifest)
    if count == 0:
        edited = manifest.rstrip(b"\n") + b"\n" + line + b"\n"
    if _manifest_serial(edited) != serial:
        raise BundleRejected("manifest.yaml: cannot set its serial (write `serial:` by hand)")
    files["manifest.yaml"] = edited
    return files


def _manifest_serial(manifest: bytes) -> object:
    try:
        doc = yaml.safe_load(manifest)
    except yaml.YAMLError:
        return None
    return doc.get("serial") if isinstance(doc, dict) else None


def _write(files: dict[str, bytes], output: Path, key_path: Path | None) -> int:
    if key_path is not None:
        files[SIGNATURES_FILE] = sign(files, load_private_key(key_path))
    write_atomically(output, pack(files))
    state = "signed" if key_path is not None else "unsigned"
    serial = _manifest_serial(files.get("manifest.yaml", b""))
    print(f"wrote {output} ({len(files)} files, {state}, serial {serial or 0})")
    return 0


def _verify(path: Path, keys: tuple[Path, ...]) -> int:
    files = read_folder(path) if path.is_dir() else _unpacked(path)
    public_keys = load_public_keys(keys)
    # The bundle is unpacked to be loaded: a copy nobody reads once the verdict is in.
    with tempfile.TemporaryDirectory(prefix="layer-router-verify-") as scratch:
        try:
            bundle, keyid = BundleKeeper(public_keys, Path(scratch)).accept(files)
        except BundleRejected as exc:
            print(f"rejected: {exc.reason}", file=sys.stderr)
            return 1
    manifest = bundle.manifest
    print(
        f"ok: bundle '{manifest.name}' revision {manifest.revision} serial {manifest.serial}, "
        f"signed by {keyid}"
    )
    return 0


def _unpacked(path: Path) -> dict[str, bytes]:
    try:
        return unpack(_read(path))
    except BundleRejected as exc:  # the operator must learn which file is meant
        raise BundleRejected(f"{path}: {exc.reason}") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
