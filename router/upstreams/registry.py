"""All of a site's clusters, their transports and probers, and the health snapshot that the
routing decision reads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Mapping

from yarl import URL

from router.inference.repository import ModelRepository
from router.policy.decide import TIER_ORDER, LocalView, Snapshot
from router.settings import ClusterSettings
from router.tasks import cancel_all
from router.upstreams.client import HttpTransport, Transport, session_for
from router.upstreams.cluster import Cluster
from router.upstreams.pool import H1Transport
from router.upstreams.prober import Prober
from router.upstreams.tls import ClientTls


class Upstreams:
    def __init__(
        self, clusters: list[Cluster], transports: Mapping[str, Transport], offline: bool
    ) -> None:
        self.clusters = {c.name: c for c in clusters}
        self.transports = dict(transports)
        self.probers = {c.name: Prober(c, self.transports[c.name]) for c in clusters}
        self.offline = offline
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False
        self._retiring: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(
        cls,
        settings: tuple[ClusterSettings, ...],
        offline: bool,
        tls: Mapping[str, ClientTls] | None = None,
    ) -> Upstreams:
        """`tls`: each cluster's client TLS (built from `settings` when not given)."""
        tls = tls if tls is not None else {s.name: ClientTls(s.tls, s.name) for s in settings}
        clusters = [Cluster.from_settings(s) for s in settings]
        transports = {s.name: transport_for(s, tls[s.name]) for s in settings}
        return cls(clusters, transports, offline)

    async def start(self) -> None:
        self._started = True
        await self._discover(list(self.probers.values()))
        self._launch(list(self.probers))

    async def _discover(self, probers: list[Prober]) -> None:
        """Know what each cluster serves before it takes a request, but never wait long."""
        if self.offline or not probers:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.gather(
                    *(p.discover() for p in probers if not p.cluster.settings.models)
                )

    def _launch(self, names: list[str]) -> None:
        if self.offline:
            return
        loop = asyncio.get_running_loop()
        for name in names:
            self._tasks[name] = loop.create_task(self.probers[name].run())

    async def reconfigure(
        self,
        settings: tuple[ClusterSettings, ...],
        offline: bool,
        tls: Mapping[str, ClientTls],
        drain_s: float,
    ) -> list[str]:
        """Apply a reloaded `upstreams` list: unchanged clusters keep their health, pools and
        probers; changed and new ones start afresh, swapped in once they know what they serve
        (discovery, bounded); removed and replaced ones then stop taking requests and close
        when their last request is done (`drain_s` at the earliest). Returns the names of the
        clusters that changed."""
        wanted = {s.name: s for s in settings}
        changed = [
            name
            for name in sorted(wanted.keys() | self.clusters.keys())
            if name not in self.clusters
            or name not in wanted
            or self.clusters[name].settings != wanted[name]
        ]
        going_offline = offline and not self.offline
        switched = offline != self.offline
        self.offline = offline
        if not changed and not switched:
            return []
        clusters, transports = dict(self.clusters), dict(self.transports)
        probers = dict(self.probers)
        for name in changed:
            for table in (clusters, transports, probers):
                table.pop(name, None)
            if name in wanted:
                new = wanted[name]
                clusters[name] = Cluster.from_settings(new)
                old = self.clusters.get(name)
                if old is not None and old.settings.tier == new.tier:
                    # One series per (cluster, tier) in /metrics: its counters go on from
                    # the old cluster's (shared while its last requests finish), never back.
                    clusters[name].counters = old.counters
                transports[name] = transport_for(new, tls[name])
                probers[name] = Prober(clusters[name], transports[name])
        if self._started:
            # Before the swap: until then the old cluster serves; a cluster swapped in first
            # would know no model, and answer 404 to every request while it discovers.
            try:
                await self._discover([probers[name] for name in changed if name in wanted])
            except BaseException:  # cancelled (shutdown): nothing swapped, nothing left open
                for name in changed:
                    if name in wanted:
                        await _close(transports[name])
                raise
        retired = [
            (self._tasks.pop(name, None), self.clusters[name], self.transports[name])
            for name in changed
            if name in self.clusters
        ]
        # New tables, never edited in place: a request iterating the old ones is unaffected.
        self.clusters, self.transports, self.probers = clusters, transports, probers
        if going_offline:
            for prober_task in self._tasks.values():
                prober_task.cancel()
            self._tasks = {}
        for old_prober, old, transport in retired:
            if old_prober is not None:
                old_prober.cancel()
            retire = asyncio.get_running_loop().create_task(_close_later(old, transport, drain_s))
            self._retiring.add(retire)
            retire.add_done_callback(self._retiring.discard)
        if self._started:  # new clusters, or every cluster when the site comes back online
            fresh = [name for name in probers if name not in self._tasks]
            await self._discover([probers[name] for name in fresh if name not in changed])
            self._launch(fresh)
        return changed

    async def close(self) -> None:
        await cancel_all([*self._tasks.values(), *self._retiring])
        for transport in self.transports.values():
            await _close(transport)

    def uplink(self, now: float) -> bool:
        """Whether anything beyond the site may be reachable: not forced offline, and some
        upstream tier not offline (or none configured: the collector stands on its own)."""
        if self.offline:
            return False
        states = self.connectivity(now)
        return not states or any(state != "offline" for state in states.values())

    def reaches(self, url: str, now: float) -> bool:
        """Whether `url` (the spool's collector) may be reachable: the uplink, and when some
        upstream endpoint has its origin (the central router is the collector too), that
        endpoint's health: another tier staying up says nothing of it."""
        if not self.uplink(now):
            return False
        origin = _origin(url)
        same = [
            ep for c in self.clusters.values() for ep in c.endpoints if _origin(ep.base) == origin
        ]
        return not same or any(ep.health.live(now) for ep in same)

    def connectivity(self, now: float) -> dict[str, str]:
        """Per tier: online (every endpoint live), degraded (some), offline (none)."""
        states: dict[str, str] = {}
        for tier in ("edge", "regional", "central"):
            endpoints = [
                ep
                for c in self.clusters.values()
                if c.settings.tier.value == tier
                for ep in c.endpoints
            ]
            if not endpoints:
                continue
            live = sum(1 for ep in endpoints if ep.health.live(now))
            states[tier] = (
                "offline"
                if self.offline or live == 0
                else "online"
                if live == len(endpoints)
                else "degraded"
            )
        return states

    def snapshot(self, now: float, models: ModelRepository) -> Snapshot:
        return Snapshot(
            local=local_views(models),
            clusters=tuple(c.view(now) for c in self.clusters.values()),
            offline=self.offline,
        )


class LocalViews(Mapping[str, LocalView]):
    """The local models as the decision sees them, each built only when asked for: a request
    looks up one model, so building every model's view per request would be waste."""

    def __init__(self, models: ModelRepository) -> None:
        self._models = models.models

    def __getitem__(self, name: str) -> LocalView:
        model = self._models[name]
        latest = model.latest
        if latest is None:
            raise KeyError(name)
        expected = 0.0
        if latest.runner is not None:
            success = latest.runner.stats.success
            expected = success.ns / success.count / 1e6 if success.count else 0.0
        return LocalView(ready=latest.ready, expected_ms=expected)

    def __iter__(self) -> Iterator[str]:
        return (name for name, m in self._models.items() if m.latest is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def upstream_routes(clusters: Iterable[Cluster]) -> list[Cluster]:
    """Clusters in the order a listing prefers them, as the routing decision walks them: the
    nearest tier first (then by name, the listing knows no latencies)."""
    return sorted(clusters, key=lambda c: (TIER_ORDER.index(c.settings.tier.value), c.name))


def transport_for(cluster: ClusterSettings, tls: ClientTls) -> Transport:
    if cluster.client == "h1":
        return H1Transport(cluster.max_connections, tls)
    return HttpTransport(session_for(cluster), tls)


def local_views(models: ModelRepository) -> Mapping[str, LocalView]:
    return LocalViews(models)


async def _close(transport: Transport) -> None:
    closer = getattr(transport, "close", None)
    if closer is not None:
        await closer()


async def _close_later(cluster: Cluster, transport: Transport, drain_s: float) -> None:
    """Close a replaced cluster's connections once its requests are done: after `drain_s` (a
    request may have picked it just before the swap), then for as long as any still runs. A
    chat stream may last minutes; closing under it would break it, and every request ends by
    its own deadline."""
    try:
        await asyncio.sleep(drain_s)
        while cluster.active > 0:
            cluster.idle = asyncio.Event()
            await cluster.idle.wait()
    finally:  # cancelled at shutdown: close now
        await _close(transport)


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port (the scheme's default when none is written), RFC 6454's origin."""
    parsed = URL(url)
    return parsed.scheme.lower(), (parsed.host or "").lower(), parsed.port
