"""Typed, frozen site settings.

A site config is YAML; every key is optional and the embedded defaults describe an edge site that
serves the bundled demo models locally on 127.0.0.1:8000. Relative paths in a file are resolved
against the file's folder, so a config and its model repository can move together.

Each section lives in the module named for its concern; import them all from here.
"""

from __future__ import annotations

from router.settings.base import PositiveFloat, PositiveInt, Tier
from router.settings.document import LoggingSettings, Settings, SiteSettings
from router.settings.listener import (
    AdminSettings,
    AuthSettings,
    LimitsSettings,
    ListenerTlsSettings,
    ServerSettings,
    is_loopback,
)
from router.settings.loading import load_settings
from router.settings.policy import BundleSourceSettings, PolicySettings, ReloadSettings
from router.settings.routing import (
    EscalationSettings,
    ModelRouteSettings,
    ModelSettings,
    RoutingSettings,
)
from router.settings.stores import AuditSettings, CacheSettings, SpoolSettings
from router.settings.upstream import (
    ClusterSettings,
    EndpointSettings,
    HealthCheckSettings,
    OutlierSettings,
    Protocol,
    RetrySettings,
    TlsSettings,
)

__all__ = [
    "AdminSettings",
    "AuditSettings",
    "AuthSettings",
    "BundleSourceSettings",
    "CacheSettings",
    "ClusterSettings",
    "EndpointSettings",
    "EscalationSettings",
    "HealthCheckSettings",
    "LimitsSettings",
    "ListenerTlsSettings",
    "LoggingSettings",
    "ModelRouteSettings",
    "ModelSettings",
    "OutlierSettings",
    "PolicySettings",
    "PositiveFloat",
    "PositiveInt",
    "Protocol",
    "ReloadSettings",
    "RetrySettings",
    "RoutingSettings",
    "ServerSettings",
    "Settings",
    "SiteSettings",
    "SpoolSettings",
    "Tier",
    "TlsSettings",
    "is_loopback",
    "load_settings",
]
