"""Ed25519 signatures over a bundle's files, in the spirit of OPA's `.signatures.json`: the
signed document lists every file's sha256, so a verified signature vouches for exactly that set
of files (a changed, added or removed file is a rejected bundle)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from router.errors import BundleRejected, ConfigError

SIGNATURES_FILE = ".signatures.json"
Files = Mapping[str, bytes]  # relative POSIX path -> content


def key_id(key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its raw bytes' sha256."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(prefix: Path) -> tuple[Path, Path]:
    """`PREFIX.key` (PKCS#8 PEM, owner-only) and `PREFIX.pub` (SubjectPublicKeyInfo PEM)."""
    private = Ed25519PrivateKey.generate()
    secret, public = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.touch(mode=0o600, exist_ok=False)
    secret.write_bytes(pem)
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return secret, public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except TypeError:
        raise ConfigError(str(path), ["private key is passphrase-protected"]) from None
    except ValueError:  # a public key, a certificate, not PEM at all
        raise ConfigError(str(path), ["not a PEM private key"]) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(str(path), ["not an Ed25519 private key"])
    return key


def load_public_keys(paths: tuple[Path, ...]) -> dict[str, Ed25519PublicKey]:
    keys = {}
    for path in paths:
        try:
            key = serialization.load_pem_public_key(_read(path))
        except ValueError:
            raise ConfigError(str(path), ["not a PEM public key"]) from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(str(path), ["not an Ed25519 public key"])
        keys[key_id(key)] = key
    return keys


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read key: {exc.strerror or exc}"]) from None


def digests(files: Files) -> list[dict[str, str]]:
    return [
        {"name": name, "sha256": hashlib.sha256(files[name]).hexdigest()}
        for name in sorted(files)
        if name != SIGNATURES_FILE
    ]


def _signed_bytes(listing: list[dict[str, str]], keyid: str) -> bytes:
    return orjson.dumps({"files": listing, "keyid": keyid}, option=orjson.OPT_SORT_KEYS)


def sign(files: Files, key: Ed25519PrivateKey) -> bytes:
    """The `.signatures.json` document for `files` (any existing signature file is ignored)."""
    listing = digests(files)
    keyid = key_id(key.public_key())
    signature = key.sign(_signed_bytes(listing, keyid))
    doc = {"files": listing, "keyid": keyid, "signature": base64.b64encode(signature).decode()}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def verify(files: Files, keys: Mapping[str, Ed25519PublicKey]) -> str:
    """The key id that signed `files`; BundleRejected when the signature is missing, made by an
    unknown key, invalid, or lists other files or digests than the bundle holds."""
    raw = files.get(SIGNATURES_FILE)
    if raw is None:
        raise BundleRejected("bundle is not signed (no .signatures.json)")
    try:
        doc = orjson.loads(raw)
        listing, keyid = doc["files"], str(doc["keyid"])
        signature = base64.b64decode(doc["signature"], validate=True)
    except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error):
        raise BundleRejected(".signatures.json is malformed") from None
    key = keys.get(keyid)
    if key is None:
        raise BundleRejected(f"signed by key {keyid[:16]!r}, which is not a configured key")
    try:
        key.verify(signature, _signed_bytes(listing, keyid))
    except InvalidSignature:
        raise BundleRejected("signature does not verify") from None
    _same_files(listing, files)
    return keyid


def shown(name: str) -> str:
    """A file name from a bundle, as our messages quote it: bounded, control characters
    escaped (the name came from the network and ends up in logs and status)."""
    return repr(name[:120])


def _same_files(listing: list[dict[str, str]], files: Files) -> None:
    signed = {item["name"]: item["sha256"] for item in listing}
    actual = {item["name"]: item["sha256"] for item in digests(files)}
    missing = sorted(signed.keys() - actual.keys())
    extra = sorted(actual.keys() - signed.keys())
    changed = sorted(n for n in signed.keys() & actual.keys() if signed[n] != actual[n])
    if missing:
        raise BundleRejected(f"signed file missing from the bundle: {shown(missing[0])}")
    if extra:
        raise BundleRejected(f"file not covered by the signature: {shown(extra[0])}")
    if changed:
        raise BundleRejected(f"file does not match its signed digest: {shown(changed[0])}")
