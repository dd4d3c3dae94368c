"""Prometheus families read from the state the router keeps anyway (cluster counters, endpoint
health, cache counts, model statistics, the spool's counters), at scrape time: serving pays
nothing for metrics nobody reads. One CollectorRegistry per app, no module-global registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from router.cache import ResponseCache
from router.inference.repository import ModelRepository
from router.policy.keeper import BundleState
from router.spool import Spool
from router.spool.collector_stats import CollectorStats
from router.telemetry.requests import RequestMetrics
from router.upstreams.registry import Upstreams

PREFIX = "layer_router_"
CONNECTIVITY_STATES = ("online", "degraded", "offline")
SPOOL_EVENTS = ("produced", "delivered", "expired", "dropped", "rejected", "corrupt", "failed")


@dataclass(frozen=True, slots=True)
class SpoolState:
    counts: dict[str, int]
    oldest_age_s: float


async def spool_state(spool: Spool | None) -> SpoolState | None:
    """Read off the loop by the spool's own worker thread (the collector cannot await)."""
    if spool is None:
        return None
    counts = await spool.counts()
    oldest = await spool.oldest_created()
    age = max(0.0, spool.now() - oldest) if oldest is not None else 0.0
    values = {name: getattr(counts, name) for name in (*SPOOL_EVENTS, "pending", "pending_bytes")}
    return SpoolState(values, age)


@dataclass(slots=True)
class Sources:
    info: Callable[[], dict[str, str]]  # router version, site, tier, policy revision (now)
    requests: RequestMetrics
    models: Callable[[], ModelRepository]  # the current generation's (reloads replace it)
    bundle: BundleState
    upstreams: Upstreams
    cache: ResponseCache
    spool: SpoolState | None = None  # refreshed by the handler before each scrape
    uploads: dict[str, Any] | None = None  # the spool's uploads (Drainer.status), likewise
    collector: CollectorStats | None = None  # a central tier's collector
    audit_failures: Callable[[], int | None] = lambda: None  # None: no audit trail


class RouterCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        info = InfoMetricFamily(PREFIX + "build", "Router version, site, tier and policy bundle")
        info.add_metric([], s.info())
        yield info
        yield from _requests(s.requests)
        yield from _upstreams(s.upstreams, asyncio.get_running_loop().time())
        yield from _cache(s.cache)
        yield from _inference(s.models())
        yield from _bundle(s.bundle)
        if s.spool is not None:
            yield from _spool(s.spool)
        if s.uploads is not None:
            yield from _uploads(s.uploads)
        if s.collector is not None:
            yield from _collector(s.collector)
        audit_failures = s.audit_failures()
        if audit_failures is not None:
            yield CounterMetricFamily(
                PREFIX + "audit_write_failures",
                "Audit records lost to failed writes (disk full, file size limit)",
                value=audit_failures,
            )


def _bundle(state: BundleState) -> Iterator[Metric]:
    """Distribution of the policy bundle: a rejected or unreachable bundle shows here."""
    for name, value, doc in (
        ("checks", state.checks, "Polls of the bundle source"),
        ("not_modified", state.not_modified, "Polls answered 304 Not Modified"),
        ("activations", state.activations, "Bundles verified and activated"),
        ("rejections", state.rejections, "Bundles rejected (signature, content, fetch)"),
    ):
        yield CounterMetricFamily(PREFIX + "policy_bundle_" + name, doc, value=value)
    yield GaugeMetricFamily(
        PREFIX + "policy_bundle_ready", "1 when a verified bundle is active", value=state.ready
    )
    yield GaugeMetricFamily(
        PREFIX + "policy_bundle_serial",
        "The active bundle's manifest serial (0: none); rollbacks below it are rejected",
        value=state.serial,
    )
    if state.last_activation is not None:
        yield GaugeMetricFamily(
            PREFIX + "policy_bundle_last_activation_timestamp_seconds",
            "When the active bundle was activated (Unix time)",
            value=state.last_activation,
        )


def _requests(metrics: RequestMetrics) -> Iterator[Metric]:
    total = CounterMetricFamily(
        PREFIX + "requests", "Answered requests", labels=["api", "tier", "outcome"]
    )
    for (api, tier, outcome), n in sorted(metrics.requests.items()):
        total.add_metric([api, tier, outcome], n)
    yield total
    latency = HistogramMetricFamily(
        PREFIX + "request_duration_seconds",
        "Time from the request's arrival to its answer (a stream: to its end)",
        labels=["api", "tier"],
    )
    for (api, tier), histogram in sorted(metrics.latency.items()):
        latency.add_metric([api, tier], histogram.cumulative(), histogram.sum)
    yield latency
    redactions = CounterMetricFamily(
        PREFIX + "redactions", "Values redacted before leaving the site", labels=["entity"]
    )
    for entity, n in sorted(metrics.redactions.items()):
        redactions.add_metric([str(entity)], n)
    yield redactions


_CLUSTER_COUNTERS = (
    ("requests", "upstream_requests", "Requests admitted to the cluster (first tries)"),
    ("retries", "upstream_retries", "Retries sent to the cluster"),
    ("retries_denied", "upstream_retries_denied", "Retries the retry budget refused"),
    ("overflows", "upstream_overflows", "Requests our own connection cap refused"),
    ("ejections", "upstream_ejections", "Endpoints ejected as outliers"),
    ("failures", "upstream_failures", "Failed tries (connection errors, 5xx, timeouts)"),
    ("auth_failures", "upstream_auth_failures", "401/403 answers to the router's own credential"),
)


def _upstreams(upstreams: Upstreams, now: float) -> Iterator[Metric]:
    labels = ["cluster", "tier"]
    attempts = CounterMetricFamily(
        PREFIX + "upstream_attempts",
        "Tries sent to the cluster (first tries and retries)",
        labels=labels,
    )
    for c in upstreams.clusters.values():
        attempts.add_metric(
            [c.name, c.settings.tier.value], c.counters.requests + c.counters.retries
        )
    yield attempts
    for field, name, doc in _CLUSTER_COUNTERS:
        family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
        for c in upstreams.clusters.values():
            family.add_metric([c.name, c.settings.tier.value], getattr(c.counters, field))
        yield family
    active = GaugeMetricFamily(PREFIX + "upstream_active_requests", "In flight", labels=labels)
    up = GaugeMetricFamily(
        PREFIX + "upstream_endpoint_up",
        "1 when the endpoint is live (passing checks, not ejected)",
        labels=[*labels, "endpoint"],
    )
    for c in upstreams.clusters.values():
        tier = c.settings.tier.value
        active.add_metric([c.name, tier], c.active)
        for ep in c.endpoints:
            up.add_metric([c.name, tier, str(ep.index)], 1.0 if ep.health.live(now) else 0.0)
    yield active
    yield up
    state = GaugeMetricFamily(
        PREFIX + "connectivity",
        "Per upstream tier: 1 for the current state (online, degraded, offline)",
        labels=["tier", "state"],
    )
    for tier, current in upstreams.connectivity(now).items():
        for name in CONNECTIVITY_STATES:
            state.add_metric([tier, name], 1.0 if name == current else 0.0)
    yield state


def _cache(cache: ResponseCache) -> Iterator[Metric]:
    lookups = CounterMetricFamily(
        PREFIX + "cache_lookups", "Response cache verdicts", labels=["outcome"]
    )
    for outcome, n in cache.counts.items():
        lookups.add_metric([outcome.value.lower()], n)
    yield lookups
    yield GaugeMetricFamily(PREFIX + "cache_bytes", "Bytes held by the cache", cache.bytes_used)


def _inference(models: ModelRepository) -> Iterator[Metric]:
    labels = ["model", "version"]
    rows = CounterMetricFamily(PREFIX + "inference_rows", "Rows inferred locally", labels=labels)
    runs = CounterMetricFamily(
        PREFIX + "inference_executions", "Session runs (a batch once)", labels=labels
    )
    fails = CounterMetricFamily(PREFIX + "inference_failures", "Failed requests", labels=labels)
    queue = CounterMetricFamily(
        PREFIX + "inference_queue_seconds", "Time requests waited for a run", labels=labels
    )
    compute = CounterMetricFamily(
        PREFIX + "inference_compute_seconds",
        "Time spent preparing inputs, running and reading outputs",
        labels=[*labels, "phase"],
    )
    depth = GaugeMetricFamily(
        PREFIX + "inference_queue_depth", "Requests queued or running", labels=labels
    )
    batches = CounterMetricFamily(
        PREFIX + "inference_batches", "Session runs by batch size", labels=[*labels, "batch_size"]
    )
    for model in models.models.values():
        for entry in model.versions.values():
            if entry.runner is None:
                continue
            key, stats = [entry.model, str(entry.version)], entry.runner.stats
            rows.add_metric(key, stats.inference_count)
            runs.add_metric(key, stats.execution_count)
            fails.add_metric(key, stats.fail.count)
            queue.add_metric(key, stats.queue.ns / 1e9)
            depth.add_metric(key, entry.runner.pending)
            for phase in ("input", "infer", "output"):
                compute.add_metric([*key, phase], stats.busy_ns(phase) / 1e9)
            for size, per_size in sorted(stats.batches.items()):
                batches.add_metric([*key, str(size)], per_size.compute_infer.count)
    yield from (rows, runs, fails, queue, compute, depth, batches)


def _collector(stats: CollectorStats) -> Iterator[Metric]:
    """Labels from closed sets only: outcomes, and error codes of the router's own tree."""
    yield CounterMetricFamily(
        PREFIX + "collector_batches", "Batches the collector stored", value=stats.batches
    )
    records = CounterMetricFamily(
        PREFIX + "collector_records", "Records received, by outcome", labels=["outcome"]
    )
    records.add_metric(["stored"], stats.stored)
    records.add_metric(["duplicate"], stats.duplicates)
    yield records
    yield CounterMetricFamily(
        PREFIX + "collector_records_removed",
        "Records the collector's retention removed (age or size bound)",
        value=stats.removed,
    )
    refused = CounterMetricFamily(
        PREFIX + "collector_refusals", "Batches refused, by error code", labels=["code"]
    )
    for code, n in sorted(stats.refused.items()):
        refused.add_metric([code], n)
    yield refused


def _spool(state: SpoolState) -> Iterator[Metric]:
    events = CounterMetricFamily(
        PREFIX + "spool_records", "Spool records by what became of them", labels=["event"]
    )
    for name in SPOOL_EVENTS:
        events.add_metric([name], state.counts[name])
    yield events
    yield GaugeMetricFamily(
        PREFIX + "spool_pending_records", "Records waiting", state.counts["pending"]
    )
    yield GaugeMetricFamily(
        PREFIX + "spool_pending_bytes", "Bytes waiting", state.counts["pending_bytes"]
    )
    yield GaugeMetricFamily(
        PREFIX + "spool_oldest_age_seconds", "Age of the oldest waiting record", state.oldest_age_s
    )


def _uploads(uploads: dict[str, Any]) -> Iterator[Metric]:
    """The spool's uploads to the collector: a site whose uploads fail (a refused key, a
    collector down) shows here before its spool fills."""
    yield CounterMetricFamily(
        PREFIX + "spool_upload_batches", "Batches the collector acknowledged", uploads["batches"]
    )
    yield CounterMetricFamily(
        PREFIX + "spool_upload_failures", "Failed upload attempts", uploads["failures"]
    )
    yield GaugeMetricFamily(
        PREFIX + "spool_upload_failing",
        "1 while uploads fail (the last attempt failed: refused or any other failure)",
        1.0 if uploads["consecutive_failures"] else 0.0,
    )


def registry_for(sources: Sources) -> tuple[CollectorRegistry, RouterCollector]:
    registry = CollectorRegistry(auto_describe=False)
    collector = RouterCollector(sources)
    registry.register(collector)
    return registry, collector


def exposition(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The registry in the format the scraper's Accept header asks for (OpenMetrics when it
    names it, as Prometheus does, else the text format) and that format's content type."""
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type
