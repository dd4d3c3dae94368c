"""Typed, frozen site settings.

A site config is YAML; every key is optional and the embedded defaults describe an edge site that
serves the bundled demo models locally on 127.0.0.1:8000. Relative paths in a file are resolved
against the file's folder, so a config and its model repository can move together.
"""

from __future__ import annotations

import ipaddress
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from router import yamlconf
from router.yamlconf import Strict

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class Tier(StrEnum):
    EDGE = "edge"
    REGIONAL = "regional"
    CENTRAL = "central"


class SiteSettings(Strict):
    id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")] = (
        "edge-local"
    )
    tier: Tier = Tier.EDGE
    # Where this site's data originates; residency rules compare endpoints' jurisdictions to it.
    jurisdiction: str = ""


class ListenerTlsSettings(Strict):
    cert_file: Path
    key_file: Path | None = None  # None: the key is in cert_file
    # Set: clients must present a certificate issued by one of these CAs (mutual TLS).
    client_ca_file: Path | None = None


class ServerSettings(Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    # How long in-flight requests may take to finish after SIGTERM/SIGINT.
    drain_timeout_s: PositiveFloat = 10.0
    # After SIGTERM, keep listening this long while readiness answers 503, so load balancers
    # and Kubernetes stop sending traffic before the listener closes.
    readiness_grace_s: Annotated[float, Field(ge=0, le=300)] = 1.0
    max_body_bytes: PositiveInt = 64 * 1024 * 1024
    # None: plain HTTP. Set: the listener speaks only HTTPS.
    tls: ListenerTlsSettings | None = None
    # Processes serving the port together (SO_REUSEPORT) under a supervisor; 1: no supervisor.
    workers: Annotated[int, Field(ge=1, le=256)] = 1


class AdminSettings(Strict):
    """The operators' listener (/metrics, /status), apart from the API so neither is reachable
    where clients are; port 8002 is Triton's metrics port."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8002


class ModelSettings(Strict):
    # None means the demo repository bundled with the program.
    repository: Path | None = None
    # Threads that run inference off the event loop, shared by every model.
    inference_threads: PositiveInt = Field(default_factory=lambda: max(1, os.cpu_count() or 1))
    # Requests queued per model before new ones get 503 + Retry-After.
    max_queue_size: PositiveInt = 256
    # Models whose measured run is shorter than this run on the event loop when idle: for them
    # a hand-off to a thread costs more CPU and latency than the work. 0 turns it off.
    inline_max_us: Annotated[int, Field(ge=0, le=1000)] = 50
    # Restrict or reorder onnxruntime execution providers for every model on this site.
    execution_providers: tuple[str, ...] = ()


class Protocol(StrEnum):
    OPENAI = "openai"
    KSERVE_V2 = "kserve-v2"


class EndpointSettings(Strict):
    url: Annotated[str, Field(pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$")]
    region: str = ""
    jurisdiction: str = ""
    weight: Annotated[int, Field(gt=0, le=1000)] = 1

    @property
    def base(self) -> str:
        return self.url.rstrip("/")


class TlsSettings(Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None
    verify: bool = True


class OutlierSettings(Strict):
    consecutive_failures: PositiveInt = 5
    base_ejection_s: PositiveFloat = 30.0
    max_ejection_s: PositiveFloat = 300.0
    max_ejected_percent: Annotated[int, Field(ge=0, le=100)] = 50


class HealthCheckSettings(Strict):
    enabled: bool = True
    path: str | None = None  # None: /v2/health/ready for kserve-v2 clusters, else /v1/models
    # Frequent and cheap, so a site notices a dead link within ~3 s and goes local-only.
    interval_s: PositiveFloat = 1.0
    timeout_s: PositiveFloat = 1.0
    healthy_threshold: PositiveInt = 2
    unhealthy_threshold: PositiveInt = 2


class RetrySettings(Strict):
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3  # tries in all, the first included
    base_backoff_ms: PositiveFloat = 25.0
    max_backoff_ms: PositiveFloat = 250.0
    max_body_bytes: PositiveInt = 64 * 1024  # larger bodies are not replayed
    budget_percent: Annotated[int, Field(ge=0, le=100)] = 20  # of active requests (Envoy)
    min_concurrency: Annotated[int, Field(ge=0)] = 3


class ClusterSettings(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")]
    tier: Tier
    protocols: tuple[Protocol, ...] = (Protocol.OPENAI, Protocol.KSERVE_V2)
    endpoints: Annotated[tuple[EndpointSettings, ...], Field(min_length=1)]
    connect_timeout_ms: PositiveInt = 1_000
    request_timeout_ms: PositiveInt = 60_000  # per try; never past the request's deadline
    expected_latency_ms: PositiveFloat = 50.0  # a prior until latency has been observed
    max_connections: PositiveInt = 256
    max_pending: Annotated[int, Field(ge=0)] = 256
    # The upstream HTTP client: h1 (httptools on asyncio.Protocol, lean) or aiohttp's.
    client: Literal["h1", "aiohttp"] = "h1"
    # Models served here; empty means "ask the endpoints" (GET /v1/models, v2 repository index).
    models: tuple[str, ...] = ()
    discovery_interval_s: PositiveFloat = 30.0
    # Extra headers for every request, e.g. an upstream API key.
    headers: dict[str, str] = {}
    forward_authorization: bool = False
    tls: TlsSettings = TlsSettings()
    outlier: OutlierSettings = OutlierSettings()
    health_check: HealthCheckSettings = HealthCheckSettings()
    retry: RetrySettings = RetrySettings()


class EscalationSettings(Strict):
    to_model: Annotated[str, Field(min_length=1)]
    threshold: Annotated[float, Field(gt=0, le=1)]
    output: str | None = None  # the scores to judge; None: the model's label output


class ModelRouteSettings(Strict):
    heavy: bool = False  # never run locally, even when the model is here
    budget_ms: PositiveInt | None = None
    escalate: EscalationSettings | None = None


class RoutingSettings(Strict):
    # Budgets for requests that state none (X-Latency-Budget-Ms, v2 parameters.timeout).
    kserve_v2_budget_ms: PositiveInt = 30_000
    openai_budget_ms: PositiveInt = 300_000
    local_max_payload_bytes: PositiveInt = 64 * 1024 * 1024
    # Path prefixes of side-effect-free routes, which may be retried; others only with an
    # Idempotency-Key header (chat and completions sample and bill: a replay is a new answer).
    idempotent_paths: tuple[str, ...] = ("/v2/", "/v1/embeddings")
    offline: bool = False  # local-only: never contact an upstream
    models: dict[str, ModelRouteSettings] = {}


class BundleSourceSettings(Strict):
    """Where signed policy bundles come from: an HTTP(S) URL (polled with If-None-Match) or a
    local path (a bundle folder or a .tar.gz, re-read every poll)."""

    url: Annotated[str, Field(pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$")] | None = None
    path: Path | None = None
    poll_interval_s: PositiveFloat = 30.0
    timeout_s: PositiveFloat = 10.0
    max_bytes: PositiveInt = 16 * 1024 * 1024
    # Extra request headers, e.g. a bearer token for the bundle server.
    headers: dict[str, str] = {}
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
    no_coalesce_paths: tuple[str, ...] = ()


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
    # Offer the collector endpoint (POST /v1/spool/batches) here. None: when the site is central.
    collect: bool | None = None


class AuditSettings(Strict):
    enabled: bool = True
    # A `.jsonl` file, or a folder holding one log per worker (`<site id>.jsonl`, worker N:
    # `<site id>.N.jsonl`): each process writes its own hash chain. Relative: to the config file
    # that names it; the default, to the working directory.
    path: Path | None = None  # None: <state dir>/audit (see router.resources.state_dir)
    # always: synced before a batch counts as written; batch: within batch_interval_ms; never: the
    # OS decides (a power cut can lose the newest records, which the next start records).
    fsync: Literal["always", "batch", "never"] = "batch"
    batch_interval_ms: PositiveInt = 100


class AuthSettings(Strict):
    # required: every API request names a tenant's key (the policy bundle's tenants.yaml).
    # disabled: requests without a known key are the anonymous tenant (`default` in
    # tenants.yaml). None: disabled when the server listens on loopback only, otherwise a
    # config error: exposing an unauthenticated router must be a written decision.
    mode: Literal["required", "disabled"] | None = None


class LimitsSettings(Strict):
    """What one client may cost the site before it is refused (TESTING.md S7, S9, R3)."""

    # One request line or header field, and the number of header fields: 431 past either.
    max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 8190
    max_headers: Annotated[int, Field(ge=8, le=1000)] = 100
    # A connection must deliver a request's head within this time of its first byte (or of
    # connecting); slow senders are closed (aiohttp alone waits as long as bytes trickle).
    header_timeout_s: PositiveFloat = 8.0
    # A keep-alive connection with no request in progress is closed after this long.
    idle_timeout_s: PositiveFloat = 60.0
    # A body must arrive within body_timeout_s plus its length at body_min_rate_bytes_per_s.
    body_timeout_s: PositiveFloat = 8.0
    body_min_rate_bytes_per_s: PositiveInt = 1024 * 1024
    # A gzip/deflate body may inflate to this many times its compressed size (past 1 MiB):
    # a compression bomb is refused long before it costs memory.
    max_inflate_ratio: Annotated[float, Field(ge=1)] = 8.0
    # Open client connections; more are answered 503 and closed at once.
    max_connections: PositiveInt = 1024
    # Requests being handled at once; more are answered 503 + Retry-After before any work.
    max_in_flight: PositiveInt = 512


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
    def _auth_decided(self) -> Settings:
        if self.auth.mode is None and not is_loopback(self.server.host):
            raise ValueError(
                f"server.host {self.server.host!r} is reachable from other machines but "
                "auth.mode is not set: set auth.mode to 'required' (tenants' key hashes in the "
                "policy bundle's tenants.yaml) or to 'disabled' to serve without authentication"
            )
        return self

    @property
    def auth_required(self) -> bool:
        return self.auth.mode == "required"


def is_loopback(host: str) -> bool:
    """Only this machine can connect: 127.0.0.0/8, ::1 or localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def load_settings(path: Path | None) -> Settings:
    """The embedded default when `path` is None, else the file's settings over the defaults."""
    if path is None:
        return Settings()
    settings = yamlconf.load(path, Settings)
    repo = settings.models.repository
    if repo is not None and not repo.is_absolute():
        models = settings.models.model_copy(update={"repository": path.parent / repo})
        settings = settings.model_copy(update={"models": models})
    policy = settings.policy
    relative: dict[str, object] = {
        key: path.parent / value
        for key, value in (("bundle", policy.bundle), ("secret_file", policy.secret_file))
        if value is not None and not value.is_absolute()
    }
    if policy.public_keys:
        relative["public_keys"] = tuple(path.parent / key for key in policy.public_keys)
    source = policy.source
    if source is not None and source.path is not None and not source.path.is_absolute():
        relative["source"] = source.model_copy(update={"path": path.parent / source.path})
    if relative:
        settings = settings.model_copy(update={"policy": policy.model_copy(update=relative)})
    spool = settings.spool
    if spool.path is not None and not spool.path.is_absolute():
        spool = spool.model_copy(update={"path": path.parent / spool.path})
        settings = settings.model_copy(update={"spool": spool})
    # Only a path the file names is the file's; the default stays in the working directory.
    audit_path = settings.audit.path
    if audit_path is not None and not audit_path.is_absolute():
        audit = settings.audit.model_copy(update={"path": path.parent / audit_path})
        settings = settings.model_copy(update={"audit": audit})
    return _tls_paths_resolved(settings, path.parent)


def _tls_paths_resolved(settings: Settings, folder: Path) -> Settings:
    """Certificate paths relative to the config file's folder, like every other path in it."""

    def resolved(tls: ListenerTlsSettings | TlsSettings) -> dict[str, Path]:
        return {
            key: folder / value
            for key, value in tls.model_dump().items()
            if isinstance(value, Path) and not value.is_absolute()
        }

    update: dict[str, object] = {}
    server_tls = settings.server.tls
    if server_tls is not None and resolved(server_tls):
        listener = server_tls.model_copy(update=resolved(server_tls))
        update["server"] = settings.server.model_copy(update={"tls": listener})
    spool_tls = settings.spool.tls
    if resolved(spool_tls):
        collector = spool_tls.model_copy(update=resolved(spool_tls))
        update["spool"] = settings.spool.model_copy(update={"tls": collector})
    clusters = tuple(
        c.model_copy(update={"tls": c.tls.model_copy(update=resolved(c.tls))})
        for c in settings.upstreams
    )
    if clusters != settings.upstreams:
        update["upstreams"] = clusters
    return settings.model_copy(update=update) if update else settings
