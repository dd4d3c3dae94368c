"""The admin listener's routes (`/metrics`, `/status`): a separate aiohttp Application served on
its own port (8002 by default, Triton's metrics port), reading the API app's state, so neither
route is reachable where clients send requests.

`/status` is a list of sections, one small function each; a new concern (say, bundle
distribution) adds its function to STATUS_SECTIONS.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry
from yarl import URL

from router import __version__
from router.api.state import (
    BUNDLE,
    CACHE,
    COLLECTOR_STATS,
    RELOADER,
    RUNTIME,
    SETTINGS,
    SPOOL,
    STATUS,
    TELEMETRY,
    TRAIL,
    UPSTREAMS,
)
from router.listener import make_runner
from router.telemetry.metrics import RouterCollector, Sources, exposition, registry_for, spool_state
from router.upstreams.pinning import drift_report
from router.workers import worker_index

Section = Callable[[web.Application], Awaitable[Any]]

API_APP = web.AppKey("api_app", web.Application)
COLLECTOR = web.AppKey("metrics_collector", RouterCollector)
REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)


def build_admin_app(api: web.Application) -> web.Application:
    """Built once the API app has started (its state exists): shares that state, serves none
    of its routes."""
    admin = web.Application()
    admin[API_APP] = api
    sources = Sources(
        info=lambda: {
            "version": __version__,
            "site": api[SETTINGS].site.id,
            "tier": api[SETTINGS].site.tier.value,
            "policy_revision": api[BUNDLE].revision,
        },
        requests=api[TELEMETRY].requests,
        models=lambda: api[RUNTIME].current.models,
        bundle=api[BUNDLE],
        upstreams=api[UPSTREAMS],
        cache=api[CACHE],
        audit_failures=lambda: _audit_failures(api),
    )
    registry, collector = registry_for(sources)
    admin[COLLECTOR] = collector
    admin[REGISTRY] = registry
    admin.router.add_get("/metrics", metrics)
    admin.router.add_get("/status", status)
    # The probes here too: a liveness probe on the API port fails while that port is at its
    # connection cap (refused with 503), and Kubernetes would restart a router that is merely
    # busy, which sheds its load onto the others.
    admin.router.add_get("/v2/health/live", live)
    admin.router.add_get("/v2/health/ready", ready)
    return admin


async def live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    """The API's readiness, as `GET /v2/health/ready` on the API port answers it."""
    api = request.app[API_APP]
    ok = not api[STATUS].draining and api[BUNDLE].ready and api[RUNTIME].current.models.ready
    return web.Response(status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    admin = request.app
    collector = admin[COLLECTOR]
    collector.sources.spool = await spool_state(admin[API_APP][SPOOL].spool)
    drainer = admin[API_APP][SPOOL].drainer
    collector.sources.uploads = None if drainer is None else drainer.status()
    collector.sources.collector = admin[API_APP].get(COLLECTOR_STATS)
    body, content_type = exposition(admin[REGISTRY], request.headers.get("Accept", ""))
    response = web.Response(body=body, headers={"Content-Type": content_type})
    response.enable_compression()  # gzip when the scraper accepts it, as Prometheus does
    return response


async def start_admin(api: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve the admin app for `api` (which has started) on host:port; the caller cleans up
    the returned runner before the API's."""
    # The API listener's defences too (head deadline, header limits, connection cap, errors
    # that never quote the request): the image publishes this port on all interfaces.
    runner = make_runner(build_admin_app(api), api[SETTINGS].limits)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def status(request: web.Request) -> web.Response:
    doc = await status_document(request.app[API_APP])
    return web.Response(
        body=orjson.dumps(doc, option=orjson.OPT_INDENT_2), content_type="application/json"
    )


async def status_document(api: web.Application) -> dict[str, Any]:
    """What `/status` answers for the API app `api`: every section by name."""
    return {name: await section(api) for name, section in STATUS_SECTIONS}


async def _site(api: web.Application) -> dict[str, Any]:
    site = api[SETTINGS].site
    return {
        "id": site.id,
        "tier": site.tier.value,
        "jurisdiction": site.jurisdiction,
        "draining": api[STATUS].draining,
    }


async def _router(api: web.Application) -> dict[str, Any]:
    """With --workers, which worker answers (each has its own admin port, counters, cache)."""
    return {
        "name": "layer-router",
        "version": __version__,
        "pid": os.getpid(),
        "worker": worker_index(),
    }


async def _policy(api: web.Application) -> dict[str, Any]:
    """The active bundle, how it was distributed (source, ETag, signer, checks, rejections and
    the last error), reloads, and model versions drifting from the bundle's pins."""
    generation = api[RUNTIME].current
    doc = api[BUNDLE].as_dict()
    doc["path"] = None if generation.pending else str(generation.bundle.path)
    doc["reload"] = api[RELOADER].state.as_dict()
    tier = generation.settings.site.tier.value
    doc["drift"] = drift_report(generation.bundle, api[UPSTREAMS], generation.models, tier)
    return doc


async def _models(api: web.Application) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for model in api[RUNTIME].current.models.models.values():
        if model.error:
            out.append({"name": model.name, "state": "UNAVAILABLE", "reason": model.error})
        for entry in model.versions.values():
            out.append(
                {
                    "name": model.name,
                    "version": str(entry.version),
                    "state": entry.state.value,
                    "reason": entry.reason,
                    "sha256": entry.sha256,
                    "provider": entry.provider,
                }
            )
    return out


async def _upstreams(api: web.Application) -> list[dict[str, Any]]:
    now = asyncio.get_running_loop().time()
    out = []
    for cluster in api[UPSTREAMS].clusters.values():
        endpoints = [
            {
                "index": ep.index,
                "url": str(URL(ep.base).with_user(None)),  # no credentials a URL may carry
                "live": ep.health.live(now),
                "ejected": ep.health.ejected(now),
                "checked_healthy": ep.health.checked_healthy,
                "expected_ms": round(ep.health.expected_ms, 3),
            }
            for ep in cluster.endpoints
        ]
        out.append(
            {
                "cluster": cluster.name,
                "tier": cluster.settings.tier.value,
                "models": sorted(cluster.models) if cluster.models is not None else None,
                "active_requests": cluster.active,
                # The upstream refuses the router's own credential for it now.
                "auth_failing": cluster.auth_failing,
                # Seconds the cluster is still tried after every other target for that (0: not).
                "auth_cooloff_s": round(max(0.0, cluster.auth_cooloff_until - now), 3),
                "endpoints": endpoints,
            }
        )
    return out


async def _connectivity(api: web.Application) -> dict[str, str]:
    upstreams = api[UPSTREAMS]
    return upstreams.connectivity(asyncio.get_running_loop().time())


async def _spool(api: web.Application) -> dict[str, Any]:
    state = await spool_state(api[SPOOL].spool)
    if state is None:
        return {"enabled": False}
    drainer = api[SPOOL].drainer
    return {
        "enabled": True,
        **state.counts,
        "oldest_age_s": round(state.oldest_age_s, 3),
        # Since this process started: streamed answers due a sample, too long to copy for it.
        "samples_too_large": api[SPOOL].oversized,
        # None where this process does not upload (no collector_url, a worker but the first).
        "uploads": None if drainer is None else drainer.status(),
    }


async def _collector(api: web.Application) -> dict[str, Any]:
    """The central tier's collector since this process started: batches, records, refusals
    and each site's last upload."""
    stats = api.get(COLLECTOR_STATS)
    if stats is None:
        return {"enabled": False}
    return {"enabled": True, **stats.as_status()}


def _audit_failures(api: web.Application) -> int | None:
    audit_log = api[TRAIL].audit_log
    return None if audit_log is None else audit_log.failures


async def _audit(api: web.Application) -> dict[str, Any]:
    """Where the trail goes and how many records a failed write lost (a full disk, a file
    size limit): the only other trace of such a gap is an error line in the log."""
    audit_log = api[TRAIL].audit_log
    if audit_log is None:
        return {"enabled": False}
    return {"enabled": True, "path": str(audit_log.path), "write_failures": audit_log.failures}


STATUS_SECTIONS: list[tuple[str, Section]] = [
    ("site", _site),
    ("router", _router),
    ("policy", _policy),
    ("models", _models),
    ("upstreams", _upstreams),
    ("connectivity", _connectivity),
    ("spool", _spool),
    ("collector", _collector),
    ("audit", _audit),
]
