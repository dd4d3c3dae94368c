"""`layer-router bundle keygen|build|sign|verify`: make and check signed policy bundles.

    layer-router bundle keygen keys/site          # keys/site.key (private), keys/site.pub
    layer-router bundle build policies/default -o bundle.tar.gz --signing-key keys/site.key
    layer-router bundle sign bundle.tar.gz --signing-key keys/site.key   # (re-)sign in place
    layer-router bundle verify bundle.tar.gz --public-key keys/site.pub

Exit codes: 0 ok; 1 a bundle that fails verification; 2 unreadable input or a bad key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from router.errors import BundleRejected, ConfigError
from router.policy.archive import pack, read_folder, unpack, write_atomically
from router.policy.keeper import BundleKeeper
from router.policy.signing import (
    SIGNATURES_FILE,
    generate_keypair,
    load_private_key,
    load_public_keys,
    sign,
)


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    bundle = commands.add_parser("bundle", help="build, sign and verify policy bundles")
    actions = bundle.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    keygen = actions.add_parser("keygen", help="write an Ed25519 key pair PREFIX.key, PREFIX.pub")
    keygen.add_argument("prefix", type=Path)
    build = actions.add_parser("build", help="pack a bundle folder into a .tar.gz")
    build.add_argument("folder", type=Path)
    build.add_argument("-o", "--output", type=Path, required=True)
    build.add_argument("--signing-key", type=Path, help="sign with this private key")
    signer = actions.add_parser("sign", help="sign a bundle .tar.gz (replaces any signature)")
    signer.add_argument("bundle", type=Path)
    signer.add_argument("--signing-key", type=Path, required=True)
    signer.add_argument("-o", "--output", type=Path, help="default: overwrite the input")
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
            files = _without_signature(read_folder(args.folder))
            return _write(files, args.output, args.signing_key)
        if args.bundle_command == "sign":
            files = _without_signature(unpack(_read(args.bundle)))
            return _write(files, args.output or args.bundle, args.signing_key)
        return _verify(args.bundle, tuple(args.public_key))
    except BundleRejected as exc:
        print(f"error: {exc.reason}", file=sys.stderr)
        return 2
    except (ConfigError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _without_signature(files: dict[str, bytes]) -> dict[str, bytes]:
    files.pop(SIGNATURES_FILE, None)
    return files


def _write(files: dict[str, bytes], output: Path, key_path: Path | None) -> int:
    if key_path is not None:
        files[SIGNATURES_FILE] = sign(files, load_private_key(key_path))
    write_atomically(output, pack(files))
    state = "signed" if key_path is not None else "unsigned"
    print(f"wrote {output} ({len(files)} files, {state})")
    return 0


def _verify(path: Path, keys: tuple[Path, ...]) -> int:
    files = read_folder(path) if path.is_dir() else unpack(_read(path))
    keeper = BundleKeeper(load_public_keys(keys), _scratch())
    try:
        bundle, keyid = keeper.accept(files)
    except BundleRejected as exc:
        print(f"rejected: {exc.reason}", file=sys.stderr)
        return 1
    print(f"ok: bundle '{bundle.manifest.name}' revision {bundle.revision}, signed by {keyid}")
    return 0


def _scratch() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="layer-router-verify-"))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
