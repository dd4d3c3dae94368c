"""`layer-router tenant new-key` and `layer-router tenant hash-key`: make API keys and the
hashes that tenants.yaml stores. A key is read from stdin, never from the command line (where
shell history and `ps` would keep it), and only `new-key` ever prints one."""

from __future__ import annotations

import argparse
import secrets
import sys
from typing import Any, TextIO

from router.tenancy import MIN_KEY_LENGTH, hash_key

KEY_PREFIX = "lr-"


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    tenant = commands.add_parser("tenant", help="make API keys and their tenants.yaml hashes")
    actions = tenant.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")
    actions.add_parser(
        "new-key", help="print a new random key (give it to the tenant) and its hash"
    )
    actions.add_parser("hash-key", help="read a key from stdin, print its hash for tenants.yaml")


def run(args: argparse.Namespace, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    if args.tenant_command == "new-key":
        key = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 random bits
        print(f"key:  {key}", file=out)
        print(f"hash: {hash_key(key)}", file=out)
        return 0
    key = stdin.readline().strip()
    if len(key) < MIN_KEY_LENGTH:
        print(
            f"error: a key must be at least {MIN_KEY_LENGTH} characters of random data "
            "(`layer-router tenant new-key` makes one)",
            file=sys.stderr,
        )
        return 2
    print(hash_key(key), file=out)
    return 0
