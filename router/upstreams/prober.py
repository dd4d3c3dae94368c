"""Background work per cluster: active health checks with hysteresis, and capability discovery
(which models the cluster serves), refreshed periodically and soon after a failure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson

from router.errors import UpstreamError, UpstreamTlsFailed
from router.headers import UNREADY, UNREADY_MODELS
from router.policy.decide import TIER_ORDER
from router.settings import Protocol
from router.upstreams.client import Transport, UpstreamRequest
from router.upstreams.cluster import Cluster, Endpoint

log = logging.getLogger(__name__)

_DISCOVERY_LIMIT = 4 * 1024 * 1024


# The shortest time between two discovery rounds asked for early (Prober.failed).
EARLY_DISCOVERY_GAP_S = 1.0


class Prober:
    def __init__(self, cluster: Cluster, transport: Transport) -> None:
        self.cluster = cluster
        self.transport = transport
        self._rediscover = asyncio.Event()
        # The cluster's own headers (an upstream API key): a probe without them is refused.
        self._headers = dict(cluster.settings.headers)

    def failed(self) -> None:
        """Ask for an early discovery round (e.g. the cluster said it lacks a model)."""
        self._rediscover.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            if self.cluster.settings.health_check.enabled:
                group.create_task(self._check_loop())
            if not self.cluster.settings.models:
                group.create_task(self._discovery_loop())

    async def _check_loop(self) -> None:
        hc = self.cluster.settings.health_check
        while True:
            await asyncio.gather(*(self.check(ep) for ep in self.cluster.endpoints))
            await asyncio.sleep(hc.interval_s)

    async def check(self, endpoint: Endpoint) -> bool:
        hc = self.cluster.settings.health_check
        passed = False
        for path in (hc.path,) if hc.path else self._default_health_paths():
            status, unready = await self._get_status(endpoint, "GET", path, hc.timeout_s)
            # A chained layer-router not ready only for models that failed to load serves the
            # others (its model list leaves the failed ones out): one broken file there must
            # not take every model's route away from the sites in front.
            passed = status is not None and (200 <= status < 300 or unready == UNREADY_MODELS)
            if status in (401, 403) and self.cluster.own_credential:
                # Down to the checks, the endpoint serves no request: the operator must
                # learn why (not only that it is unhealthy).
                self.cluster.credential_refused(
                    status, "health check", asyncio.get_running_loop().time()
                )
            # Only "no such path" moves on: an OpenAI-only server (vLLM, llama.cpp) has no
            # /v2/health/ready, while a 503 there is a KServe server saying it is not ready.
            if status not in (404, 405):
                break
        endpoint.health.check_result(passed, self.cluster.check_rules)
        return passed

    def _default_health_paths(self) -> tuple[str, ...]:
        protocols = self.cluster.settings.protocols
        paths: tuple[str, ...] = ("/v2/health/ready",) if Protocol.KSERVE_V2 in protocols else ()
        return (*paths, "/v1/models") if Protocol.OPENAI in protocols or not paths else paths

    async def _get_status(
        self, endpoint: Endpoint, method: str, path: str, limit_s: float
    ) -> tuple[int | None, str | None]:
        """The answer's status (None when there was no answer) and its UNREADY header."""
        try:
            async with asyncio.timeout(limit_s):
                response = await self.transport.send(
                    UpstreamRequest(method, endpoint.base + path, self._headers, b"", probe=True),
                    "health check",
                    limit_s,
                )
                await response.read(_DISCOVERY_LIMIT)
        except UpstreamTlsFailed:
            self.cluster.tls_refused("health check")
            return None, None
        except (UpstreamError, TimeoutError):
            return None, None
        self.cluster.tls_accepted()
        return response.status, response.headers.get(UNREADY)

    async def _discovery_loop(self) -> None:
        interval = self.cluster.settings.discovery_interval_s
        while True:
            await self.discover()
            self._rediscover.clear()
            # Re-discover sooner while nothing is known, so a cluster that starts late is used.
            # (What it lists, not what it serves now: a refused model is no reason to ask more.)
            wait = interval if self.cluster.listed else min(interval, 1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    # An early round at most this often: every 404 a client provokes asks for
                    # one, and the cluster's list must not be polled back to back.
                    await asyncio.sleep(min(wait, EARLY_DISCOVERY_GAP_S))
                    await self._rediscover.wait()

    async def discover(self) -> frozenset[str] | None:
        found: set[str] = set()
        versions: dict[str, set[str]] = {}
        tiers: dict[str, str] = {}
        answered = False
        protocols = self.cluster.settings.protocols
        for endpoint in self.cluster.endpoints:
            if Protocol.OPENAI in protocols:
                listed = await self._names(endpoint, "GET", "/v1/models", _openai_names)
                answered |= listed is not None
                found |= listed[0] if listed else set()
                _nearest(tiers, listed[2] if listed else {})
            if Protocol.KSERVE_V2 in protocols:
                listed = await self._names(endpoint, "POST", "/v2/repository/index", _v2_names)
                answered |= listed is not None
                found |= listed[0] if listed else set()
                for name, seen in (listed[1] if listed else {}).items():
                    versions.setdefault(name, set()).update(seen)
                _nearest(tiers, listed[2] if listed else {})
        if answered:
            self.cluster.learn(frozenset(found), asyncio.get_running_loop().time())
            self.cluster.versions = {name: frozenset(v) for name, v in versions.items()}
            self.cluster.tiers = tiers
        return self.cluster.models

    async def _names(
        self, endpoint: Endpoint, method: str, path: str, parse: Any
    ) -> Listing | None:
        timeout = self.cluster.settings.health_check.timeout_s
        try:
            async with asyncio.timeout(timeout):
                response = await self.transport.send(
                    UpstreamRequest(method, endpoint.base + path, self._headers, b"", probe=True),
                    "discovery",
                    timeout,
                )
                body = await response.read(_DISCOVERY_LIMIT)
        except UpstreamTlsFailed:
            self.cluster.tls_refused("model list request")
            return None
        except (UpstreamError, TimeoutError):
            return None
        self.cluster.tls_accepted()
        if response.status in (401, 403) and self.cluster.own_credential:
            # A cluster whose list is refused serves nothing, so no request would tell the
            # operator why (with health checks off, or a health path that needs no key).
            self.cluster.credential_refused(
                response.status, "model list request", asyncio.get_running_loop().time()
            )
        if response.status != 200:
            return None
        try:
            listing: Listing = parse(orjson.loads(body))
        except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
            log.warning("cluster %s: unreadable model list from %s", self.cluster.name, path)
            return None
        return listing


# The model names an endpoint serves, per model the versions it reports (when it does), and per
# model the tiers a chained layer-router's listing names (each of its entries says one).
Listing = tuple[set[str], dict[str, set[str]], dict[str, set[str]]]


def _openai_names(doc: Any) -> Listing:
    # OpenAI's model list has no versions: such a cluster reports none (see upstreams.pinning).
    items = doc["data"]
    return {str(item["id"]) for item in items}, {}, _tiers(items, "id")


def _v2_names(doc: Any) -> Listing:
    ready = [item for item in doc if item.get("state", "READY") == "READY"]
    versions: dict[str, set[str]] = {}
    for item in ready:
        version = str(item.get("version") or "")
        if version:
            versions.setdefault(str(item["name"]), set()).add(version)
    return {str(item["name"]) for item in ready}, versions, _tiers(ready, "name")


def _tiers(items: Any, key: str) -> dict[str, set[str]]:
    """A chained layer-router's entry names its preferred tier (`tier`) and every tier that
    serves the model (`tiers`): all of them count, the nearest is chosen (`_nearest`)."""
    tiers: dict[str, set[str]] = {}
    for item in items:
        listed = item.get("tiers")
        named = [item.get("tier"), *(listed if isinstance(listed, list) else ())]
        for tier in named:
            if isinstance(tier, str):
                tiers.setdefault(str(item[key]), set()).add(tier)
    return tiers


def _nearest(into: dict[str, str], reported: dict[str, set[str]]) -> None:
    """Per model, the nearest real tier reported: a router that lists a model both as its own
    and behind its upstream serves it itself."""
    for name, tiers in reported.items():
        known = [t for t in (*tiers, into.get(name, "")) if t in TIER_ORDER]
        if known:
            into[name] = min(known, key=TIER_ORDER.index)
