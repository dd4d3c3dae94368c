"""Upstream clusters: where requests go when they do not run here, and how they are tried."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from router.settings.base import HeaderFields, PathPrefix, PositiveFloat, PositiveInt, Tier
from router.yamlconf import Strict


class Protocol(StrEnum):
    OPENAI = "openai"
    KSERVE_V2 = "kserve-v2"


class EndpointSettings(Strict):
    url: Annotated[str, Field(pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$")]
    region: str = ""
    jurisdiction: str = ""
    weight: Annotated[int, Field(gt=0, le=1000)] = 1

    @field_validator("url")
    @classmethod
    def _host_and_port(cls, url: str) -> str:
        # The pattern lets "http://a:99999" and "http://:80" through; both fail only when
        # the first request is sent.
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = 0
        if not parts.hostname:
            raise ValueError("the URL names no host")
        if port is not None and not 1 <= port <= 65535:
            raise ValueError("the URL's port must be a number from 1 to 65535")
        return url

    @property
    def base(self) -> str:
        return self.url.rstrip("/")

    @property
    def host(self) -> str:
        """The host the URL names, lower case, without port or brackets: what residency
        rules' `endpoints` match."""
        return (urlsplit(self.url).hostname or "").lower()


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
    # After the cluster refuses the router's own credential (401/403), the routing decision
    # tries it only after every other target for this long, then first again (one request
    # finds out whether the key works now); 0 never puts it last. Not an ejection: a wrong
    # key is no outage, and the cluster stays a last resort.
    auth_cooloff_s: Annotated[float, Field(ge=0, le=3600)] = 30.0


class HealthCheckSettings(Strict):
    enabled: bool = True
    # None: /v2/health/ready for kserve-v2 clusters, and /v1/models for openai ones (also
    # when /v2/health/ready is 404: a cluster of both protocols may be an OpenAI-only server).
    path: PathPrefix | None = None
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
    # Per try, never past the request's deadline; in a stream, the longest wait for a byte.
    request_timeout_ms: PositiveInt = 60_000
    expected_latency_ms: PositiveFloat = 50.0  # a prior until latency has been observed
    max_connections: PositiveInt = 256
    max_pending: Annotated[int, Field(ge=0)] = 256
    # The upstream HTTP client: h1 (httptools on asyncio.Protocol, lean) or aiohttp's.
    client: Literal["h1", "aiohttp"] = "h1"
    # Models served here; empty means "ask the endpoints" (GET /v1/models, v2 repository index).
    models: tuple[str, ...] = ()
    discovery_interval_s: PositiveFloat = 30.0
    # The largest answer held whole (one read before it is relayed, to restore redacted values,
    # to cache it; a relayed one is cut there); longer ones are 502
    # upstream_response_too_large. 64 MiB fits a big embeddings batch (2048 x 1536 floats as
    # JSON, ~60 MB) or a v2 image model's FP32 output (3 x 2048 x 2048: 48 MiB); a few of
    # them at once stay well within a site's memory.
    max_response_bytes: Annotated[int, Field(ge=1024, le=1024**3)] = 64 * 1024 * 1024
    # A 200 answer longer than this (its Content-Length, or its bytes as they arrive) goes to
    # the client as it arrives, unless it is needed whole (redacted values to restore, the
    # cache keeps it, a spool sample): memory a few chunks, not the answer. Shorter ones are
    # read whole (retried when cut, compressed whole). At or over max_response_bytes: never.
    relay_over_bytes: Annotated[int, Field(ge=1024, le=1024**3)] = 1024 * 1024
    # Extra headers for every request, e.g. an upstream API key.
    headers: HeaderFields = {}
    forward_authorization: bool = False
    tls: TlsSettings = TlsSettings()
    outlier: OutlierSettings = OutlierSettings()
    health_check: HealthCheckSettings = HealthCheckSettings()
    retry: RetrySettings = RetrySettings()
