"""What a site keeps on disk or in memory: the answer cache, the spool, the audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from router.policy.model import KeyHash
from router.settings.base import PathPrefix, PositiveFloat, PositiveInt, SiteId
from router.settings.upstream import TlsSettings
from router.yamlconf import Strict


class CacheSettings(Strict):
    enabled: bool = True
    max_bytes: PositiveInt = 256 * 1024 * 1024
    # Answers stay this long past their freshness, to be served (marked STALE) when every
    # target is offline or failing.
    max_stale_s: Annotated[float, Field(ge=0)] = 3600.0
    # Freshness when the answer states none (an upstream's Cache-Control max-age wins); 0: not
    # cached. Chat answers are samples, not facts: only cached when an upstream says so.
    kserve_v2_ttl_s: Annotated[float, Field(ge=0)] = 300.0
    openai_ttl_s: Annotated[float, Field(ge=0)] = 0.0
    # Concurrent identical misses share one execution, except on these path prefixes.
    coalesce: bool = True
    no_coalesce_paths: tuple[PathPrefix, ...] = ()


# A certificate's SHA-256 fingerprint over its DER bytes: hex, colons allowed (as `openssl x509
# -fingerprint -sha256` prints it), any case.
CertFingerprint = Annotated[str, Field(pattern=r"^sha256:(?:[0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$")]
# A name a client certificate carries: its subject CN or a DNS, IP or URI subjectAltName.
CertName = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^\S+$")]


class SiteCredentials(Strict):
    """A site's upload credentials in their long form: key hashes and, over mTLS, the client
    certificate that is that site's (by fingerprint or by a name it carries)."""

    keys: tuple[KeyHash, ...] = ()
    certificates: tuple[CertFingerprint, ...] = ()
    certificate_names: tuple[CertName, ...] = ()


def fingerprint_hex(fingerprint: str) -> str:
    """A CertFingerprint as bare lower-case hex."""
    return fingerprint.removeprefix("sha256:").replace(":", "").lower()


class SpoolSettings(Strict):
    # Store-and-forward for what must reach the central tier. None: no spool on this site.
    path: Path | None = None
    max_bytes: PositiveInt = 256 * 1024 * 1024
    max_records: PositiveInt = 1_000_000
    ttl_s: PositiveFloat = 7 * 24 * 3600.0
    # When full: drop the oldest records to make room, or refuse new ones (both counted).
    on_full: Literal["drop-oldest", "reject-new"] = "drop-oldest"
    batch_size: Annotated[int, Field(gt=0, le=10_000)] = 500
    drain_rate_per_s: PositiveFloat = 200.0  # records per second uploaded, at most
    collector_url: Annotated[str, Field(pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$")] | None = None
    # TLS towards the collector (an https collector_url), as for an upstream cluster.
    tls: TlsSettings = TlsSettings()
    # Where the collector is (as an endpoint's `jurisdiction`): a sample goes to it only when
    # residency lets its request reach the central tier there. "": untagged.
    collector_jurisdiction: str = ""
    # A file holding this site's upload key (`layer-router tenant new-key`), sent as
    # `Authorization: Bearer <key>` with every batch. Relative: to the config file.
    collector_key_file: Path | None = None
    # Offer the collector endpoint (POST /v1/spool/batches) here. None: when the site is central.
    collect: bool | None = None
    # The collector's side: each site id and the `sha256:` hash(es) of its upload key (a list
    # while a key is being rotated). Empty: uploads need mTLS (server.tls.client_ca_file), or
    # the router must listen on loopback only. The long form (SiteCredentials) also binds the
    # site to its client certificate under mTLS. Applied on reload.
    collector_sites: dict[SiteId, KeyHash | tuple[KeyHash, ...] | SiteCredentials] = {}
    # The collector's store: records older than this are removed with their keys (keep it
    # above every site's ttl_s, or a late resend is stored twice); over the byte bound the
    # oldest records lose their payload, keeping their keys. Applied on reload.
    collector_retention_s: PositiveFloat = 30 * 24 * 3600.0
    collector_max_bytes: PositiveInt = 4 * 1024 * 1024 * 1024

    @model_validator(mode="after")
    def _key_has_a_collector(self) -> SpoolSettings:
        if self.collector_key_file is not None and self.collector_url is None:
            raise ValueError("collector_key_file is set but collector_url is not: nothing uploads")
        return self

    @model_validator(mode="after")
    def _site_keys_unique(self) -> SpoolSettings:
        for what, owned in (
            ("key hash", self.site_key_hashes()),
            ("certificate", self.site_certificates()),
        ):
            owner: dict[str, str] = {}
            for site, values in owned.items():
                for value in values:
                    if owner.setdefault(value, site) != site:
                        raise ValueError(
                            f"collector_sites: sites {owner[value]} and {site} hold the same {what}"
                        )
        return self

    def site_key_hashes(self) -> dict[str, tuple[str, ...]]:
        """Each site's accepted key hashes, a single hash read as a list of one."""
        return {site: _credentials(given).keys for site, given in self.collector_sites.items()}

    def site_certificates(self) -> dict[str, tuple[str, ...]]:
        """Each site's client certificate bindings: `sha256:<hex>` fingerprints (normalised)
        and `name:<name>` names (lower case); empty for a site bound to none."""
        bound = {}
        for site, given in self.collector_sites.items():
            credentials = _credentials(given)
            bound[site] = tuple(
                [f"sha256:{fingerprint_hex(f)}" for f in credentials.certificates]
                + [f"name:{name.lower()}" for name in credentials.certificate_names]
            )
        return bound


def _credentials(given: str | tuple[str, ...] | SiteCredentials) -> SiteCredentials:
    if isinstance(given, SiteCredentials):
        return given
    return SiteCredentials(keys=(given,) if isinstance(given, str) else given)


class AuditSettings(Strict):
    enabled: bool = True
    # A `.jsonl` file, or a folder holding one log per worker (`<site id>.jsonl`, worker N:
    # `<site id>.N.jsonl`): each process writes its own hash chain. Relative: to the config file
    # that names it; the default, to the working directory.
    path: Path | None = None  # None: <state dir>/audit (see router.resources.state_dir)
    # Each record is written to the file before its answer goes out (a kill -9 loses none);
    # always: the answer also waits for its fsync (group commit); batch: synced within
    # batch_interval_ms; never: the OS decides (a power cut can lose the newest records, which
    # the next start records).
    fsync: Literal["always", "batch", "never"] = "batch"
    batch_interval_ms: PositiveInt = 100
