"""All of a site's clusters, their transports and probers, and the health snapshot that the
routing decision reads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping

from router.inference.repository import ModelRepository
from router.policy.decide import LocalView, Snapshot
from router.settings import ClusterSettings
from router.upstreams.client import HttpTransport, Transport, session_for
from router.upstreams.cluster import Cluster
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
        self._tasks: list[asyncio.Task[None]] = []

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
        transports = {s.name: HttpTransport(session_for(s), tls[s.name]) for s in settings}
        return cls(clusters, transports, offline)

    async def start(self) -> None:
        if self.offline:
            return
        # Know what each cluster serves before the first request, but never wait long for it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.gather(
                    *(p.discover() for p in self.probers.values() if not p.cluster.settings.models)
                )
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(p.run()) for p in self.probers.values()]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in self.transports.values():
            closer = getattr(transport, "close", None)
            if closer is not None:
                await closer()

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


def local_views(models: ModelRepository) -> Mapping[str, LocalView]:
    return LocalViews(models)
