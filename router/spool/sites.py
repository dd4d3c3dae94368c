"""Which site uploads a batch: the collector's check of its credentials, and the site's own
upload key, read from its file.

A site proves who it is with an upload key, sent as `Authorization: Bearer <key>`, that the
central tier knows only by its hash (`spool.collector_sites`: the `sha256:` form tenants.yaml
uses, made by `layer-router tenant new-key`), or, where the listener asks every client for a
certificate (`server.tls.client_ca_file`), with the verified certificate alone. A batch names
the site it comes from (`X-Layer-Router-Site`); one site's key naming another site is refused,
so no site can file records under another's name. Over mTLS a site can also be bound to its
client certificate (`spool.collector_sites.<site>.certificates` / `.certificate_names`): a
certificate bound to one site uploading for another, or an unbound one for a bound site, is
refused the same way. Records whose payload names a site (`"site"` in a JSON object: audit
copies and samples do) must name the uploader.

A presented key is hashed and compared with every known hash by `hmac.compare_digest`, without
stopping at a match, so neither the answer's timing nor anything else tells which hash was
close. No message, log line or metric quotes a key or a hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from router.errors import BadRequest, ConfigError, SiteMismatch, Unauthorized
from router.settings import Settings, is_loopback
from router.spool.wire import Item
from router.tenancy import MIN_KEY_LENGTH, hash_key, presented_key

SITE_HEADER = "X-Layer-Router-Site"  # the site a batch comes from, as the uploader says
SITE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")  # as settings.SiteId


@dataclass(frozen=True)
class PeerCertificate:
    """The client certificate the listener verified on a connection, as sites are bound to
    it: its SHA-256 fingerprint and the names it carries."""

    fingerprint: str  # over the DER bytes, lower-case hex
    names: frozenset[str]  # subject CN and DNS, IP and URI subjectAltNames, lower case

    @classmethod
    def of(cls, ssl_object: Any) -> PeerCertificate | None:
        """The verified certificate of a connection's `ssl_object` (None: none, or unverified)."""
        if ssl_object is None:
            return None
        info = ssl_object.getpeercert()  # empty unless the listener verified one
        der = ssl_object.getpeercert(binary_form=True)
        if not info or not der:
            return None
        names = {v for rdn in info.get("subject", ()) for k, v in rdn if k == "commonName"}
        names |= {v for k, v in info.get("subjectAltName", ()) if k in ("DNS", "IP Address", "URI")}
        return cls(hashlib.sha256(der).hexdigest(), frozenset(n.strip().lower() for n in names))

    def bindings(self) -> set[str]:
        """As `SpoolSettings.site_certificates` writes them."""
        return {f"sha256:{self.fingerprint}", *(f"name:{name}" for name in self.names)}


@dataclass(frozen=True)
class SiteGuard:
    """Who may upload to this collector."""

    hashes: tuple[tuple[str, str], ...] = ()  # (key hash, site id)
    mtls: bool = False  # the listener verified a client certificate on every connection
    open: bool = True  # nobody needs to authenticate: a loopback-only router without keys
    certificates: tuple[tuple[str, str], ...] = ()  # (certificate binding, site id)

    @classmethod
    def of(cls, settings: Settings) -> SiteGuard:
        hashes = tuple(
            (hashed, site)
            for site, site_hashes in settings.spool.site_key_hashes().items()
            for hashed in site_hashes
        )
        certificates = tuple(
            (binding, site)
            for site, bindings in settings.spool.site_certificates().items()
            for binding in bindings
        )
        tls = settings.server.tls
        mtls = tls is not None and tls.client_ca_file is not None
        # Sites listed (even with certificate bindings only, which need mTLS): never open.
        unguarded = not settings.spool.collector_sites and not mtls
        return cls(hashes, mtls, open=unguarded, certificates=certificates)

    def admit(
        self,
        headers: Mapping[str, str],
        *,
        certified: bool = False,
        certificate: PeerCertificate | None = None,
    ) -> str | None:
        """The uploading site (None: unnamed, where that is allowed); 401 without a valid key
        or certificate, 403 when a valid key or a bound certificate belongs to another site
        than the batch names. `certified`: the connection presented a client certificate the
        listener verified (`certificate`, when known, implies it)."""
        claimed = headers.get(SITE_HEADER)
        key = presented_key(headers)
        if key is not None and self.hashes:
            site = self._site_of(key)
            if site is None:
                raise Unauthorized("the site's upload key is not valid")
            if claimed is not None and claimed != site:
                raise SiteMismatch("the upload key belongs to another site than the batch names")
            self._certificate_fits(site, certificate)
            return site
        if self.open or (self.mtls and (certified or certificate is not None)):
            if claimed is not None and not SITE_ID.fullmatch(claimed):
                raise BadRequest(f"{SITE_HEADER} must be a site id (letters, digits and ._-)")
            named = claimed if claimed is not None else self._bound_site(certificate)
            if named is not None:
                self._certificate_fits(named, certificate)
            return named
        raise Unauthorized(
            "a site's upload key is required: send 'Authorization: Bearer <key>'"
            " (spool.collector_key_file on the uploading site)"
        )

    def _bound_site(self, certificate: PeerCertificate | None) -> str | None:
        """The site this certificate is bound to, if any."""
        if certificate is None or not self.certificates:
            return None
        bindings = certificate.bindings()
        return next((site for bound, site in self.certificates if bound in bindings), None)

    def _certificate_fits(self, site: str, certificate: PeerCertificate | None) -> None:
        """403 when the connection's certificate is bound to another site, or `site` is bound
        to certificates and this is none of them. No certificate: the key alone vouched."""
        if certificate is None:
            return
        owner = self._bound_site(certificate)
        if owner is not None and owner != site:
            raise SiteMismatch("the client certificate belongs to another site than named")
        if owner is None and any(bound_site == site for _, bound_site in self.certificates):
            raise SiteMismatch("the client certificate is not one bound to the site named")

    def _site_of(self, key: str) -> str | None:
        presented = hash_key(key)
        found = None
        for hashed, site in self.hashes:  # every one: how long this takes names no hash
            if hmac.compare_digest(presented, hashed):
                found = site
        return found


_NO_SITE = object()


def check_record_sites(items: Sequence[Item], site: str | None) -> None:
    """403 when a record's payload names another site than the uploader (`"site"` in a JSON
    object, as audit copies and samples carry it): no site files records in another's name.
    Nothing to check against for an unnamed upload (an open collector)."""
    if site is None:
        return
    for index, item in enumerate(items):
        named = _payload_site(item.payload)
        if named is not _NO_SITE and named != site:
            raise SiteMismatch(f"record {index} names another site than the one uploading it")


def _payload_site(payload: bytes) -> object:
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _NO_SITE
    return document.get("site", _NO_SITE) if isinstance(document, dict) else _NO_SITE


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
