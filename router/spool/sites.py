"""Which site uploads a batch: the collector's check of its credentials, and the site's own
upload key, read from its file.

A site proves who it is with an upload key, sent as `Authorization: Bearer <key>`, that the
central tier knows only by its hash (`spool.collector_sites`: the `sha256:` form tenants.yaml
uses, made by `layer-router tenant new-key`), or, where the listener asks every client for a
certificate (`server.tls.client_ca_file`), with the verified certificate alone. A batch names
the site it comes from (`X-Layer-Router-Site`); one site's key naming another site is refused,
so no site can file records under another's name.

A presented key is hashed and compared with every known hash by `hmac.compare_digest`, without
stopping at a match, so neither the answer's timing nor anything else tells which hash was
close. No message, log line or metric quotes a key or a hash.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from router.errors import BadRequest, ConfigError, SiteMismatch, Unauthorized
from router.settings import Settings, is_loopback
from router.tenancy import MIN_KEY_LENGTH, hash_key, presented_key

SITE_HEADER = "X-Layer-Router-Site"  # the site a batch comes from, as the uploader says
SITE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")  # as settings.SiteId


@dataclass(frozen=True)
class SiteGuard:
    """Who may upload to this collector."""

    hashes: tuple[tuple[str, str], ...] = ()  # (key hash, site id)
    mtls: bool = False  # the listener verified a client certificate on every connection
    open: bool = True  # nobody needs to authenticate: a loopback-only router without keys

    @classmethod
    def of(cls, settings: Settings) -> SiteGuard:
        hashes = tuple(
            (hashed, site)
            for site, site_hashes in settings.spool.site_key_hashes().items()
            for hashed in site_hashes
        )
        tls = settings.server.tls
        mtls = tls is not None and tls.client_ca_file is not None
        return cls(hashes, mtls, open=not hashes and not mtls)

    def admit(self, headers: Mapping[str, str], *, certified: bool = False) -> str | None:
        """The uploading site (None: unnamed, where that is allowed); 401 without a valid key
        or certificate, 403 when a valid key belongs to another site than the batch names.
        `certified`: the connection presented a client certificate the listener verified."""
        claimed = headers.get(SITE_HEADER)
        key = presented_key(headers)
        if key is not None and self.hashes:
            site = self._site_of(key)
            if site is None:
                raise Unauthorized("the site's upload key is not valid")
            if claimed is not None and claimed != site:
                raise SiteMismatch("the upload key belongs to another site than the batch names")
            return site
        if self.open or (self.mtls and certified):
            if claimed is not None and not SITE_ID.fullmatch(claimed):
                raise BadRequest(f"{SITE_HEADER} must be a site id (letters, digits and ._-)")
            return claimed
        raise Unauthorized(
            "a site's upload key is required: send 'Authorization: Bearer <key>'"
            " (spool.collector_key_file on the uploading site)"
        )

    def _site_of(self, key: str) -> str | None:
        presented = hash_key(key)
        found = None
        for hashed, site in self.hashes:  # every one: how long this takes names no hash
            if hmac.compare_digest(presented, hashed):
                found = site
        return found


def sent_in_clear(url: str) -> bool:
    """Whether an upload key sent to the collector at `url` would cross a network unencrypted."""
    parts = urlsplit(url)
    return parts.scheme == "http" and not is_loopback(parts.hostname or "")


def read_key_file(path: Path) -> str:
    """The upload key in `path` (spool.collector_key_file), surrounding whitespace removed.
    Blocking file I/O: call it off the event loop. Errors name the file, never its content."""
    where = "spool.collector_key_file"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"{where}: cannot read it: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), [f"{where}: the file is not UTF-8 text"]) from None
    key = text.strip()
    if len(key) < MIN_KEY_LENGTH or not key.isprintable() or any(c.isspace() for c in key):
        raise ConfigError(
            str(path),
            [
                f"{where}: the file must hold one key of at least {MIN_KEY_LENGTH} characters "
                "without spaces (`layer-router tenant new-key` makes one)"
            ],
        )
    return key
