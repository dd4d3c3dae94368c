"""The router's own credentials for a cluster (a key in its `headers`, an endpoint URL's
user:password), as an upstream's answer could quote them back.

An upstream's error often quotes the request it refuses, headers included ("invalid header
'Authorization: Bearer sk-...'"), and the router relays error answers to its client: a key
the operator gave the router for that upstream would reach any client able to provoke the
error. Such answers are rid of those values before they are relayed.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

from router.headers import CREDENTIALS

# Shorter values are not looked for: they would match unrelated text, and no real key is this
# short.
MIN_SECRET_CHARS = 8
REDACTED = b"[redacted]"


def own_secrets(headers: Mapping[str, str], urls: Iterable[str]) -> tuple[bytes, ...]:
    """Every form in which a cluster's credentials may be quoted: a credential header's value,
    its token after the scheme (Bearer, Basic), and a Basic pair's decoded password; a URL's
    password and the Basic value it is sent as. Longest first."""
    found: set[str] = set()
    for name, value in headers.items():
        if name.lower() in CREDENTIALS:
            found.update(_forms(value))
    for url in urls:
        parts = urlsplit(url)
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            found.add(unquote(parts.password or ""))
            found.add(base64.b64encode(pair.encode()).decode("ascii"))
    kept = {s.encode() for s in found if len(s) >= MIN_SECRET_CHARS}
    return tuple(sorted(kept, key=len, reverse=True))


def _forms(value: str) -> set[str]:
    value = value.strip()
    forms = {value}
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if token:
        forms.add(token)
        if scheme.lower() == "basic":
            try:
                pair = base64.b64decode(token, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                pair = ""
            forms.add(pair.partition(":")[2])
    return forms


def scrubbed(body: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """`body` with every one of `secrets` replaced (a search per secret: few, short)."""
    for secret in secrets:
        if secret in body:
            body = body.replace(secret, REDACTED)
    return body
