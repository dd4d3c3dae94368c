"""The listeners (API and admin) and what a client may cost before it is refused."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from router.settings.base import PositiveFloat, PositiveInt
from router.yamlconf import Strict

MAX_WORKERS = 256


# A DNS name (RFC 1123 labels; underscores too, as container service names have them).
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)


def _listen_address(host: str) -> str:
    """An IP address or a host name to listen on. `[::1]` is how an IPv6 address is written in
    a URL; the socket wants it bare. Anything else (`127.0.0.1:8000`, `http://0.0.0.0`, an
    unexpanded `${HOST}`, empty) is refused here, where check sees it, not when serve binds."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        if not _HOST_NAME.match(bare):
            raise ValueError(
                "not an IP address or host name to listen on (no scheme, no port: "
                "0.0.0.0 for every interface)"
            ) from None
    return bare


Host = Annotated[str, AfterValidator(_listen_address)]


class ListenerTlsSettings(Strict):
    cert_file: Path
    key_file: Path | None = None  # None: the key is in cert_file
    # Set: clients must present a certificate issued by one of these CAs (mutual TLS).
    client_ca_file: Path | None = None


class ServerSettings(Strict):
    host: Host = "127.0.0.1"
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
    workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = 1


class AdminSettings(Strict):
    """The operators' listener (/metrics, /status), apart from the API so neither is reachable
    where clients are; port 8002 is Triton's metrics port."""

    enabled: bool = True
    host: Host = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8002


class AuthSettings(Strict):
    # required: every API request names a tenant's key (the policy bundle's tenants.yaml).
    # disabled: requests without a known key are the anonymous tenant (`default` in
    # tenants.yaml). None: disabled when the server listens on loopback only, otherwise a
    # config error: exposing an unauthenticated router must be a written decision.
    mode: Literal["required", "disabled"] | None = None


class LimitsSettings(Strict):
    """What one client may cost the site before it is refused (TESTING.md S7, S9, R3)."""

    # One request line (414 past it) or header field, and the number of header fields (431).
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


def is_loopback(host: str) -> bool:
    """Only this machine can connect: 127.0.0.0/8, ::1 or localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything
