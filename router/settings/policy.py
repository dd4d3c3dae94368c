"""The policy bundle (local or distributed and signed) and how often config is re-read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from router.settings.base import HeaderFields, PositiveFloat, PositiveInt
from router.settings.upstream import TlsSettings
from router.yamlconf import Strict


class BundleSourceSettings(Strict):
    """Where signed policy bundles come from: an HTTP(S) URL (polled with If-None-Match) or a
    local path (a bundle folder or a .tar.gz, re-read every poll)."""

    url: Annotated[str, Field(pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$")] | None = None
    path: Path | None = None
    poll_interval_s: PositiveFloat = 30.0
    timeout_s: PositiveFloat = 10.0
    max_bytes: PositiveInt = 16 * 1024 * 1024
    # Extra request headers, e.g. a bearer token for the bundle server.
    headers: HeaderFields = {}
    # For an https URL: a private CA, a client certificate (as for upstream clusters).
    tls: TlsSettings = TlsSettings()

    @model_validator(mode="after")
    def _one_place(self) -> BundleSourceSettings:
        if (self.url is None) == (self.path is None):
            raise ValueError("a bundle source needs exactly one of url and path")
        return self


class PolicySettings(Strict):
    # A policy bundle folder; None: the bundle shipped with the program (policies/default).
    bundle: Path | None = None
    # Key for keyed pseudonyms (HMAC-SHA256). None: a random key per process, so pseudonyms
    # stay stable only until a restart. A file must hold at least 32 bytes.
    secret_file: Path | None = None
    # Distributed bundles (instead of `bundle`): fetched, verified and activated at run time.
    source: BundleSourceSettings | None = None
    # Ed25519 public keys (PEM). When any is set, every bundle must carry a valid signature by
    # one of them; without keys only a local, unsigned bundle may be used.
    public_keys: tuple[Path, ...] = ()

    @model_validator(mode="after")
    def _signed_when_remote(self) -> PolicySettings:
        if self.bundle is not None and self.source is not None:
            raise ValueError("policy: set bundle or source, not both")
        if self.source is not None and self.source.url is not None and not self.public_keys:
            raise ValueError("policy: a remote bundle source needs public_keys to verify it")
        if self.public_keys and self.bundle is None and self.source is None:
            raise ValueError("policy: public_keys need a signed bundle (policy.bundle or source)")
        return self


class ReloadSettings(Strict):
    # How often to look for a changed config file and model repository (0: only on SIGHUP).
    poll_interval_s: Annotated[float, Field(ge=0)] = 0.0
