"""A cluster: its endpoints' health, its breaker and retry budget, and what it serves."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Collection
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from router.headers import CREDENTIALS
from router.policy.decide import TIER_ORDER as _TIERS
from router.policy.decide import ClusterView
from router.settings import ClusterSettings, EndpointSettings
from router.upstreams.health import CheckRules, EndpointHealth, OutlierRules, may_eject
from router.upstreams.own_secrets import own_secrets

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Counters:
    requests: int = 0
    retries: int = 0
    retries_denied: int = 0  # a retry the budget refused
    overflows: int = 0  # our own cap refused a request (the upstream is not blamed)
    ejections: int = 0
    failures: int = 0
    auth_failures: int = 0  # the upstream refused the router's own credential (401/403)


@dataclass(slots=True)
class Endpoint:
    settings: EndpointSettings
    health: EndpointHealth
    index: int

    @property
    def base(self) -> str:
        return self.settings.base


@dataclass(slots=True)
class Cluster:
    settings: ClusterSettings
    endpoints: list[Endpoint]
    models: frozenset[str] | None = None
    # Per model, the versions the cluster's endpoints report serving (v2 repository index).
    versions: dict[str, frozenset[str]] = field(default_factory=dict)
    # Per model, the tier a chained layer-router says serves it (its listings name one): a
    # regional router lists central's models as `central`, and so should the router in front.
    tiers: dict[str, str] = field(default_factory=dict)
    # What the cluster's listing (or its config) says it serves; `models` is that less the
    # models an endpoint refused since (`refuse`).
    listed: frozenset[str] | None = None
    # Per refused model, the loop time until which it is believed absent whatever the listing
    # says: a listing that still names an unloaded model must not send the next request there
    # first. Past that time the listing is believed again (the model may be back).
    refused: dict[str, float] = field(default_factory=dict)
    active: int = 0
    # Set when `active` falls to 0, once a replaced cluster waits for its last request.
    idle: asyncio.Event | None = None
    retries_active: int = 0
    counters: Counters = field(default_factory=Counters)
    # Fixed by the settings (a reload that changes them makes a new cluster): made once here,
    # not in every request's view.
    protocols: frozenset[str] = field(init=False)
    jurisdictions: frozenset[str] = field(init=False)
    hosts: frozenset[str] = field(init=False)  # of the endpoints, as residency rules name them
    # The router sends its own credential for this cluster (a key in its `headers`) and none
    # of the client's: a 401/403 then refuses the router, not the client (UpstreamAuthFailed).
    own_credential: bool = field(init=False)
    # The upstream refuses that credential now: set by the first refusal, cleared by the next
    # answer it accepts, so the operator is told once per outage (and /status shows it).
    auth_failing: bool = False
    # Until this loop time the cluster is tried after every other target (ClusterView.
    # auth_cooloff): set by each refusal of the router's credential, ended early by an answer
    # that accepts it. A client's refused key never sets it.
    auth_cooloff_until: float = 0.0
    tls_failing: bool = False
    # The forms of the router's own credentials, scrubbed from error answers relayed.
    secrets: tuple[bytes, ...] = field(init=False)
    # An endpoint URL holds user:password: the router's own credential for any request that
    # goes without an Authorization of its own (sent as Basic).
    url_credential: bool = field(init=False)

    def __post_init__(self) -> None:
        self.protocols = frozenset(p.value for p in self.settings.protocols)
        self.jurisdictions = frozenset(ep.settings.jurisdiction for ep in self.endpoints)
        self.hosts = frozenset(ep.settings.host for ep in self.endpoints)
        named = {name.lower() for name in self.settings.headers}
        # A URL's user:password is sent as Basic credentials: the router's own too.
        in_url = any(urlsplit(ep.settings.url).username is not None for ep in self.endpoints)
        self.url_credential = in_url
        urls = (ep.settings.url for ep in self.endpoints)
        self.secrets = own_secrets(self.settings.headers, urls)
        self.own_credential = not self.settings.forward_authorization and (
            in_url or not named.isdisjoint(CREDENTIALS)
        )

    @classmethod
    def from_settings(cls, settings: ClusterSettings) -> Cluster:
        endpoints = [
            Endpoint(ep, EndpointHealth(prior_ms=settings.expected_latency_ms), i)
            for i, ep in enumerate(settings.endpoints)
        ]
        static = frozenset(settings.models) if settings.models else None
        return cls(settings, endpoints, models=static, listed=static)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def outlier_rules(self) -> OutlierRules:
        o = self.settings.outlier
        return OutlierRules(
            o.consecutive_failures, o.base_ejection_s, o.max_ejection_s, o.max_ejected_percent
        )

    @property
    def check_rules(self) -> CheckRules:
        hc = self.settings.health_check
        return CheckRules(hc.healthy_threshold, hc.unhealthy_threshold)

    def tier_of(self, model: str) -> str:
        """The tier that serves a model behind this cluster: the one its listing reported when
        that is a real tier at or past the cluster's own (as `X-Served-By-Tier` is believed)."""
        own = self.settings.tier.value
        reported = self.tiers.get(model)
        if reported in _TIERS and _TIERS.index(reported) >= _TIERS.index(own):
            return reported
        return own

    def learn(self, listed: frozenset[str], now: float) -> None:
        """What a discovery round found the cluster lists, less what it refused lately."""
        self.listed = listed
        self.refused = {model: until for model, until in self.refused.items() if until > now}
        self.models = listed - self.refused.keys() if self.refused else listed

    def refuse(self, model: str, now: float) -> None:
        """An endpoint answered that it does not serve `model` although the listing said it
        does (it unloaded it since): believed absent here until the next discovery interval."""
        self.refused[model] = now + self.settings.discovery_interval_s
        if self.models is not None and model in self.models:
            self.models = self.models - {model}

    def not_allowed(self, model: str, now: float) -> None:
        """The upstream's policy refuses `model` to the router's credential: refused like a
        model it lacks, and told to the operator once per refusal (the requests meanwhile
        go elsewhere; the key itself is fine, so no auth failure, no cool-off)."""
        if self.refused.get(model, 0.0) <= now:
            log.warning(
                "cluster %s does not allow the router's credential model '%s' (403 "
                "model_not_allowed): other targets serve it meanwhile; allow it there or "
                "route it elsewhere",
                self.name,
                model,
            )
        self.refuse(model, now)

    def _readmit(self, now: float) -> None:
        """Refusals past their time: the listing's word holds again."""
        expired = [model for model, until in self.refused.items() if until <= now]
        for model in expired:
            del self.refused[model]
        if expired and self.listed is not None:
            self.models = self.listed - self.refused.keys()

    def live(self, now: float) -> list[Endpoint]:
        return [ep for ep in self.endpoints if ep.health.live(now)]

    def view(self, now: float) -> ClusterView:
        if self.refused:
            self._readmit(now)
        live = self.live(now)
        return ClusterView(
            name=self.name,
            tier=self.settings.tier.value,
            protocols=self.protocols,
            models=self.models,
            live_endpoints=len(live),
            expected_ms=min((ep.health.expected(now) for ep in live), default=float("inf")),
            jurisdictions=self.jurisdictions,
            hosts=self.hosts,
            auth_cooloff=self.auth_cooling_off(now),
        )

    def auth_cooling_off(self, now: float) -> bool:
        return now < self.auth_cooloff_until

    def pick(
        self, now: float, avoid: Endpoint | None = None, exclude: Collection[int] = ()
    ) -> Endpoint | None:
        """A live endpoint by weight, preferring one other than the endpoint that just failed,
        never one whose index is in `exclude`."""
        live = self.live(now)
        if exclude:
            live = [ep for ep in live if ep.index not in exclude]
        if avoid is not None and len(live) > 1:
            live = [ep for ep in live if ep is not avoid]
        if not live:
            return None
        if len(live) == 1:
            return live[0]
        return random.choices(live, weights=[ep.settings.weight for ep in live])[0]

    def admit(self) -> bool:
        """The circuit breaker: our own cap on requests in flight to this cluster."""
        if self.active >= self.settings.max_connections + self.settings.max_pending:
            self.counters.overflows += 1
            return False
        self.active += 1
        self.counters.requests += 1
        return True

    def done(self) -> None:
        self.active -= 1
        if not self.active and self.idle is not None:
            self.idle.set()

    def retry_allowed(self) -> bool:
        """Envoy's retry budget: retries in flight stay under a share of active requests."""
        retry = self.settings.retry
        allowed = max(retry.min_concurrency, self.active * retry.budget_percent / 100)
        if self.retries_active < allowed:
            return True
        self.counters.retries_denied += 1
        return False

    def credential_refused(self, status: int, by: str, now: float) -> None:
        """The upstream answered `status` (401/403) to the router's own credential, to a
        request or a health check (`by`): counted, told to the operator once per outage (a
        refused key fails every request; a line each would drown the log), and the cluster
        cools off: tried last for `outlier.auth_cooloff_s`, so the requests meanwhile do not
        each pay a refusal before their fallback."""
        self.counters.auth_failures += 1
        self.auth_cooloff_until = now + self.settings.outlier.auth_cooloff_s
        if not self.auth_failing:
            self.auth_failing = True
            log.error(
                "cluster %s refused the router's credential for it (%d to a %s): check the key "
                "in its `headers` (or its endpoint URLs' user:password); other targets serve "
                "meanwhile",
                self.name,
                status,
                by,
            )

    def credential_accepted(self) -> None:
        """A request's answer other than 401/403 ends an outage of the router's credential.
        (Not a health check's: a health path may need no key at all.)"""
        self.auth_cooloff_until = 0.0  # a key fixed meanwhile: its place comes back at once
        if self.auth_failing:
            self.auth_failing = False
            log.warning("cluster %s accepts the router's credential again", self.name)

    def tls_refused(self, by: str) -> None:
        """A TLS handshake with the cluster failed (unknown CA, wrong name, expired or missing
        certificate) on a `by`: told to the operator once per outage. Health checks refused so
        mark its endpoints down, and the 503 clients then get would not say why."""
        if not self.tls_failing:
            self.tls_failing = True
            log.error(
                "cluster %s: TLS handshake refused (on a %s): check upstreams[].tls (ca_file, "
                "server_name, cert_file) against its certificate; it counts as down meanwhile",
                self.name,
                by,
            )

    def tls_accepted(self) -> None:
        """A handshake with the cluster succeeded: an outage of TLS is over."""
        if self.tls_failing:
            self.tls_failing = False
            log.warning("cluster %s: TLS handshakes succeed again", self.name)

    def record_failure(self, endpoint: Endpoint, now: float) -> None:
        self.counters.failures += 1
        ejected = sum(1 for ep in self.endpoints if ep.health.ejected(now))
        allowed = may_eject(ejected, len(self.endpoints), self.outlier_rules)
        if endpoint.health.failed(now, self.outlier_rules, allowed):
            self.counters.ejections += 1
