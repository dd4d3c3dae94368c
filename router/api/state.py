"""Typed application state shared by the handlers (aiohttp AppKeys; no module globals).

What a reload may replace (settings' reloadable parts, policy bundle, privacy, models,
pipelines) lives in the runtime generation: read `app[RUNTIME].current`, or in a request
handler `router.api.current.current(request)`, the generation the request is pinned to.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from router.cache import ResponseCache
from router.policy.keeper import BundleState
from router.ratelimit import Limiters
from router.reload import Reloader
from router.runtime import Pipelines, Runtime
from router.settings import Settings
from router.spool.collector import CollectorStore
from router.spool.collector_stats import CollectorStats
from router.store_forward import StoreAndForward
from router.telemetry import Telemetry
from router.trail import Trail
from router.upstreams.registry import Upstreams
from router.upstreams.tls import TlsContexts

__all__ = ["Pipelines", "ServerStatus"]


@dataclass(slots=True)
class ServerStatus:
    draining: bool = False  # set on SIGTERM: readiness turns 503 while in-flight work finishes
    # The scopes of the streamed answers being written, and of the requests waiting for their
    # answer: a drain that runs out of time ends each with an error event, or a 503 answer
    # (router.api.draining.end_streams), instead of cutting it.
    streams: set[asyncio.Timeout] = field(default_factory=set)


SETTINGS = web.AppKey("settings", Settings)  # as started; the current: RUNTIME's generation
RUNTIME = web.AppKey("runtime", Runtime)
# The policy bundle's source, revision, ETag, last check and error, activation/rejection counts.
BUNDLE = web.AppKey("bundle", BundleState)
# Reloads (SIGHUP, polling); its `hooks` list takes callbacks run after every reload.
RELOADER = web.AppKey("reloader", Reloader)
STATUS = web.AppKey("status", ServerStatus)
UPSTREAMS = web.AppKey("upstreams", Upstreams)
# Every certificate the site uses; hot reload calls `app[TLS].reload()` (in a thread).
TLS = web.AppKey("tls", TlsContexts)
CACHE = web.AppKey("cache", ResponseCache)
TRAIL = web.AppKey("trail", Trail)
SPOOL = web.AppKey("spool", StoreAndForward)
TELEMETRY = web.AppKey("telemetry", Telemetry)
LIMITERS = web.AppKey("limiters", Limiters)
# The collector's handler, when this site collects (a list: empty when it does not).
COLLECTOR = web.AppKey("collector", list[Handler])
# What the collector took and refused since start; set only when this site collects.
COLLECTOR_STATS = web.AppKey("collector_stats", CollectorStats)
# The collector's store (its retention is replaced on reload); set only when this site collects.
COLLECTOR_STORE = web.AppKey("collector_store", CollectorStore)
