"""Typed application state shared by the handlers (aiohttp AppKeys; no module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from router.cache import ResponseCache
from router.inference.repository import ModelRepository
from router.pipeline import Pipeline
from router.policy.bundle import PolicyBundle
from router.privacy import Privacy
from router.ratelimit import Limiters
from router.settings import Settings
from router.store_forward import StoreAndForward
from router.tenancy import Tenancy
from router.trail import Trail
from router.upstreams.registry import Upstreams


@dataclass(slots=True)
class ServerStatus:
    draining: bool = False  # set on SIGTERM: readiness turns 503 while in-flight work finishes


@dataclass(frozen=True, slots=True)
class Pipelines:
    v2_infer: Pipeline
    openai: Pipeline
    upstream_only: Pipeline  # requests about a model only upstreams hold (v2 metadata, ready)
    tenancy: Tenancy | None = None  # the pipelines' tenants, for routes outside a pipeline


SETTINGS = web.AppKey("settings", Settings)
MODELS = web.AppKey("models", ModelRepository)
PIPELINES = web.AppKey("pipelines", Pipelines)
STATUS = web.AppKey("status", ServerStatus)
UPSTREAMS = web.AppKey("upstreams", Upstreams)
POLICY = web.AppKey("policy", PolicyBundle)
PRIVACY = web.AppKey("privacy", Privacy)
CACHE = web.AppKey("cache", ResponseCache)
TRAIL = web.AppKey("trail", Trail)
SPOOL = web.AppKey("spool", StoreAndForward)
LIMITERS = web.AppKey("limiters", Limiters)
# The collector's handler, when this site collects (a list: empty when it does not).
COLLECTOR = web.AppKey("collector", list[Handler])
