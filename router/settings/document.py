"""The whole site config: every section, and the checks that span sections."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from router.settings.base import SiteId, Tier
from router.settings.listener import (
    AdminSettings,
    AuthSettings,
    LimitsSettings,
    ServerSettings,
    is_loopback,
)
from router.settings.policy import PolicySettings, ReloadSettings
from router.settings.routing import ModelSettings, RoutingSettings
from router.settings.stores import AuditSettings, CacheSettings, SpoolSettings
from router.settings.upstream import ClusterSettings
from router.yamlconf import Strict


class SiteSettings(Strict):
    id: SiteId = "edge-local"
    tier: Tier = Tier.EDGE
    # Where this site's data originates; residency rules compare endpoints' jurisdictions to it.
    jurisdiction: str = ""


class LoggingSettings(Strict):
    level: Annotated[str, Field(pattern=r"^(?i:debug|info|warning|error)$")] = "info"
    # json: one object a line for log shippers; text: for a person at a terminal.
    format: Literal["json", "text"] = "json"
    # A line per request (method, route template, status, duration; never path or query).
    access_log: bool = False


class Settings(Strict):
    site: SiteSettings = SiteSettings()
    server: ServerSettings = ServerSettings()
    admin: AdminSettings = AdminSettings()
    models: ModelSettings = ModelSettings()
    logging: LoggingSettings = LoggingSettings()
    upstreams: tuple[ClusterSettings, ...] = ()
    routing: RoutingSettings = RoutingSettings()
    policy: PolicySettings = PolicySettings()
    cache: CacheSettings = CacheSettings()
    spool: SpoolSettings = SpoolSettings()
    audit: AuditSettings = AuditSettings()
    reload: ReloadSettings = ReloadSettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitsSettings = LimitsSettings()

    @model_validator(mode="after")
    def _unique_cluster_names(self) -> Settings:
        names = [c.name for c in self.upstreams]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ValueError(f"upstreams: cluster name '{duplicate}' is used twice")
        return self

    @model_validator(mode="after")
    def _admin_port_apart(self) -> Settings:
        # Otherwise the second bind fails as "address already in use", pointing elsewhere.
        server, admin = self.server, self.admin
        wildcard = {"", "0.0.0.0", "::"}
        overlap = server.host == admin.host or {server.host, admin.host} & wildcard
        if admin.enabled and admin.port != 0 and admin.port == server.port and overlap:
            raise ValueError(
                f"admin.port {admin.port} is server.port too: the admin listener (/metrics, "
                "/status) needs a port of its own (--admin-port)"
            )
        return self

    @model_validator(mode="after")
    def _one_audit_chain_per_worker(self) -> Settings:
        # Each worker appends its own hash chain; two writers on one file would interleave
        # (serve refuses the second at start, after the first has begun serving).
        path = self.audit.path
        if self.audit.enabled and self.server.workers > 1 and path and path.suffix == ".jsonl":
            raise ValueError(
                f"audit.path {str(path)!r} names one file but server.workers is "
                f"{self.server.workers}: each worker writes its own chain, so name a folder "
                "(it then holds <site>.jsonl, <site>.1.jsonl, ...)"
            )
        return self

    @model_validator(mode="after")
    def _auth_decided(self) -> Settings:
        if self.auth.mode is None and not is_loopback(self.server.host):
            raise ValueError(
                f"server.host {self.server.host!r} is reachable from other machines but "
                "auth.mode is not set: set auth.mode to 'required' (tenants' key hashes in the "
                "policy bundle's tenants.yaml) or to 'disabled' to serve without authentication"
            )
        return self

    @model_validator(mode="after")
    def _collector_guarded(self) -> Settings:
        if self.collects and not self.collector_authenticates and not is_loopback(self.server.host):
            why = "spool.collect is true" if self.spool.collect else "site.tier is central"
            raise ValueError(
                f"this router offers the spool collector (POST /v1/spool/batches: {why}) and "
                f"server.host {self.server.host!r} is reachable from other machines, but "
                "uploads are not authenticated: set spool.collector_sites (each site's id and "
                "the sha256: hash of its upload key, from `layer-router tenant new-key`), or "
                "server.tls.client_ca_file (mTLS), or spool.collect: false"
            )
        return self

    @model_validator(mode="after")
    def _certificates_need_mtls(self) -> Settings:
        keys, certificates = self.spool.site_key_hashes(), self.spool.site_certificates()
        tls = self.server.tls
        for site in self.spool.collector_sites:
            if not keys[site] and not certificates[site]:
                raise ValueError(
                    f"spool.collector_sites.{site}: names neither a key nor a certificate"
                )
            if certificates[site] and (tls is None or tls.client_ca_file is None):
                raise ValueError(
                    f"spool.collector_sites.{site}: a certificate binding needs "
                    "server.tls.client_ca_file (clients present certificates only over mTLS)"
                )
        return self

    @property
    def auth_required(self) -> bool:
        return self.auth.mode == "required"

    @property
    def keys_in_clear(self) -> bool:
        """Tenants' API keys would reach this listener over plain HTTP from other machines."""
        server = self.server
        return self.auth_required and server.tls is None and not is_loopback(server.host)

    @property
    def collects(self) -> bool:
        """Whether this router offers the collector: as `spool.collect` says, else if central."""
        if self.spool.collect is not None:
            return self.spool.collect
        return self.site.tier is Tier.CENTRAL

    @property
    def collector_authenticates(self) -> bool:
        """Uploads must show a site's key, or arrive over mTLS (a verified client certificate)."""
        tls = self.server.tls
        mtls = tls is not None and tls.client_ca_file is not None
        return mtls or bool(self.spool.collector_sites)
