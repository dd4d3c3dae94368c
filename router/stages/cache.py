"""LookupCache: answer from the response cache, or run the rest of the chain (once for all
concurrent identical requests) and keep what it answers; fall back to a stale copy when the
rest fails for want of a reachable target."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from router.cache import (
    Entry,
    Outcome,
    RequestDirectives,
    ResponseCache,
    entry_headers,
    must_revalidate,
    response_ttl,
    upstream_age,
    vary_names,
    vary_values,
)
from router.context import Reply, RequestContext
from router.errors import (
    DeadlineExceeded,
    NotCached,
    RouterError,
    Unavailable,
    UpstreamError,
)
from router.headers import TENANT
from router.inference.repository import ModelRepository
from router.pipeline import Rest
from router.policy.bundle import PolicyBundle
from router.settings import CacheSettings, SiteSettings
from router.singleflight import SingleFlight
from router.sse import ends_with_done, error_code
from router.stages.coalesce import Flight, FlightFailed, LeaderOutOfTime, leading

X_CACHE = "X-Cache"

# Failures a stale answer may stand in for: nothing reachable could answer in time.
_STALE_IF = (Unavailable, UpstreamError, DeadlineExceeded)


class LookupCache:
    name = "cache"
    terminal = False

    def __init__(
        self,
        cache: ResponseCache,
        settings: CacheSettings,
        bundle: PolicyBundle,
        site: SiteSettings,
        models: ModelRepository | None = None,
    ) -> None:
        self._cache = cache
        self._models = models
        self._settings = settings
        self._bundle = bundle
        self._site = site
        self._flights: SingleFlight[Flight] = SingleFlight()

    async def around(self, ctx: RequestContext, rest: Rest) -> Reply:
        directives = RequestDirectives.parse(_cache_control(ctx))
        if not self._settings.enabled:  # no key to make
            _not_cached(directives)
            return self._counted(ctx, Outcome.BYPASS, await rest())
        if not self._cache.may_hold(ctx.api) and self._ttl(ctx) <= 0:
            # Nothing of this API was ever kept and its answers are not kept by default: no
            # entry to find, nothing to coalesce. The key is made only if the answer's own
            # Cache-Control asks to keep it.
            _not_cached(directives)
            return await self._unkeyed(ctx, directives, rest)
        key = self._key(ctx) if directives.store or directives.lookup else None
        if key is None:
            _not_cached(directives)
            return self._counted(ctx, Outcome.BYPASS, await rest())
        stale: Entry | None = None
        if directives.lookup:
            found = self._cache.get(key, allow_stale=True)
            if found is not None and not found[0].varies_from(ctx.headers, self._cache.vary_digest):
                entry, now = found[0], self._cache.now()
                if directives.fresh_enough(entry, now):
                    return self._replay(ctx, entry, Outcome.HIT)
                if directives.takes_stale(entry, now):
                    return self._replay(ctx, entry, Outcome.STALE)
                stale = None if entry.revalidate else entry
        _not_cached(directives)
        if directives.store:
            ctx.cache_ttl = self._ttl(ctx)  # a long answer is then read whole (relaying)
        try:
            reply = await self._miss(ctx, key, rest)
        except _STALE_IF:
            if stale is None:
                raise
            return self._replay(ctx, stale, Outcome.STALE)
        if directives.store:
            reply = self._keep(ctx, key, reply)
        return self._counted(ctx, Outcome.MISS, reply)

    async def _unkeyed(
        self, ctx: RequestContext, directives: RequestDirectives, rest: Rest
    ) -> Reply:
        """Answer without a lookup, and key the request only when its answer asks to be kept
        (the key's inputs are fixed before the rest of the chain runs)."""
        if not (directives.store or directives.lookup) or not self._cacheable(ctx):
            return self._counted(ctx, Outcome.BYPASS, await rest())
        if directives.store:
            ctx.cache_ttl = 0.0  # kept if its Cache-Control asks: then read whole (relaying)
        reply = await rest()
        if directives.store and _answer_ttl(reply, 0.0):
            reply = self._keep(ctx, self._digest(ctx), reply)
        return self._counted(ctx, Outcome.MISS, reply)

    async def _miss(self, ctx: RequestContext, key: bytes, rest: Rest) -> Reply:
        if ctx.stream or not self._coalesces(ctx):
            return await rest()
        # A follower waits within its own budget (the flight goes on for the others); the
        # leader's rest of the chain keeps its budget itself, and says how it ran out.
        following = key in self._flights
        budget = asyncio.timeout_at(ctx.deadline if following else None)
        try:
            async with budget:
                flight, joined = await self._flights.run(key, leading(ctx, rest))
        except TimeoutError:
            if not budget.expired():
                raise  # the flight's own, shared with every waiter
            raise DeadlineExceeded("the request's latency budget ran out") from None
        except LeaderOutOfTime as late:
            if following and ctx.deadline > late.deadline:
                return await rest()  # the leader's budget ran out, not this one's
            raise late.error from None
        except FlightFailed as failed:
            if following:
                ctx.served_tier, ctx.upstream_reasons = failed.tier, failed.upstream_reasons
                ctx.reasons[:] = [*failed.reasons, "coalesced"]
            raise failed.error from None
        if not joined:
            return flight.reply
        if flight.private or any(ctx.headers.get(name) != value for name, value in flight.vary):
            return await rest()  # this follower asks for itself
        # A follower tells the leader's story: who served it, why, and under which record;
        # its own record names the model too, so it stands without the leader's.
        ctx.served_tier, ctx.upstream_reasons = flight.tier, flight.upstream_reasons
        ctx.upstream_ms, ctx.cache_of = flight.upstream_ms, flight.audit_id or None
        ctx.served_by, ctx.served_version, ctx.model_sha256, ctx.served_model = flight.model
        ctx.reasons[:] = [*flight.reasons, "coalesced"]
        reply = flight.reply
        return Reply(reply.body, reply.content_type, reply.status, dict(reply.headers))

    def _coalesces(self, ctx: RequestContext) -> bool:
        """Identical requests share an answer only where answers are reusable: a chat route
        with no default lifetime asks each sample of the upstream."""
        s = self._settings
        if self._ttl(ctx) <= 0:
            return False
        return s.coalesce and not ctx.path.startswith(s.no_coalesce_paths or ("\0",))

    def _key(self, ctx: RequestContext) -> bytes | None:
        """None when this request must not be cached (see `_cacheable`)."""
        return self._digest(ctx) if self._cacheable(ctx) else None

    def _cacheable(self, ctx: RequestContext) -> bool:
        """False for what must not be cached: off, a GET, unscanned content, or a class
        stricter than the bundle allows."""
        if not self._settings.enabled or ctx.method != "POST" or ctx.document is None:
            return False
        if ctx.unscanned or ctx.unsurveyed:
            return False
        ranked = self._bundle.data_classes.classes
        return ranked.index(ctx.data_class) <= ranked.index(self._bundle.cache.max_data_class)

    def _digest(self, ctx: RequestContext) -> bytes:
        canonical = orjson.dumps(_keyed_document(ctx), option=orjson.OPT_SORT_KEYS)
        return self._cache.key(
            (
                ctx.api,
                ctx.path,
                ctx.model,
                ctx.version or "",
                self._artefact(ctx),
                self._bundle.revision,
                # Tenants never share answers: the scope is the resolved tenant, not a header;
                # behind another router, that router's tenant too (it can only narrow).
                ctx.tenant,
                ctx.headers.get(TENANT, ""),
                ctx.declared_class,
                ctx.data_class,
                self._site.jurisdiction,
                # Answers to authorised requests are shared only among the same credentials
                # (every header that may carry one upstream: router.headers.CREDENTIALS).
                ctx.headers.get("Authorization", ""),
                ctx.headers.get("api-key", ""),
                ctx.headers.get("X-Api-Key", ""),
                ctx.headers.get("Cookie", ""),
                # The headers the bundle scans are redacted upstream and restored in the
                # answer: one echoing a user's e-mail must not be another user's hit.
                *self._scanned_headers(ctx),
                canonical,
                *_tensor_parts(ctx, self._cache),
            )
        )

    def _scanned_headers(self, ctx: RequestContext) -> list[str]:
        """Every value of each header the bundle scans, in the bundle's order, each list
        closed by a NUL (no header value holds one) so that values cannot shift between
        names."""
        getall = getattr(ctx.headers, "getall", None)
        parts: list[str] = []
        for name in self._bundle.detection.headers:
            if getall is not None:
                parts.extend(getall(name, ()))
            elif name in ctx.headers:
                parts.append(ctx.headers[name])
            parts.append("\x00")
        return parts

    def _artefact(self, ctx: RequestContext) -> str:
        """The sha256 of the local version that answers `ctx` ("" for none): a model file
        replaced on disk keeps its version number, and a new highest version takes over the
        requests naming none, yet neither may be answered with the old file's answers."""
        if self._models is None or ctx.model not in self._models.models:
            return ""
        try:
            return self._models.find(ctx.model, ctx.version).sha256
        except RouterError:
            return ""

    def _ttl(self, ctx: RequestContext) -> float:
        s = self._settings
        return s.kserve_v2_ttl_s if ctx.api == "kserve-v2" else s.openai_ttl_s

    def _replay(self, ctx: RequestContext, entry: Entry, outcome: Outcome) -> Reply:
        ctx.served_tier = entry.tier
        ctx.served_by, ctx.served_version, ctx.model_sha256, ctx.served_model = entry.model
        ctx.cache_of = entry.audit_id or None
        ctx.reasons.append("cache_hit" if outcome is Outcome.HIT else "cache_stale")
        headers = dict(entry.headers)
        headers["Age"] = str(int(entry.age(self._cache.now())))
        reply = Reply(entry.body, entry.content_type, entry.status, headers)
        if entry.events is not None:
            reply.stream = _replay_events(entry.events)
        return self._counted(ctx, outcome, reply)

    def _counted(self, ctx: RequestContext, outcome: Outcome, reply: Reply) -> Reply:
        self._cache.count(outcome)
        ctx.cache = outcome.value
        reply.headers[X_CACHE] = outcome.value
        return reply

    def _keep(self, ctx: RequestContext, key: bytes, reply: Reply) -> Reply:
        if reply.passthrough:  # relayed as it arrives: only an answer not to be kept is
            return reply
        if reply.status != 200 or "*" in vary_names(reply.headers.get("Vary")):
            return reply
        ttl = _answer_ttl(reply, self._ttl(ctx))
        if not ttl:
            return reply
        if reply.stream is not None:
            # The source is bound now: read from `reply.stream` later, the recorder would be
            # reading itself.
            reply.stream = self._recording(ctx, key, reply, reply.stream, ttl)
            return reply
        self._cache.put(key, self._entry(ctx, reply, ttl, None), ctx.api)
        return reply

    async def _recording(
        self,
        ctx: RequestContext,
        key: bytes,
        reply: Reply,
        source: AsyncIterator[bytes],
        ttl: float,
    ) -> AsyncIterator[bytes]:
        """Relay a stream and keep it once it ended well; a broken one is never stored, nor
        one that came ending with an error event (a chained router's upstream broke off). One
        larger than the whole cache could never be stored either: its recording stops there,
        so an endless (or huge) stream an upstream marks cacheable does not pile up here."""
        events: list[bytes] | None = []
        recorded, limit = 0, self._cache.max_bytes
        try:
            async for chunk in source:
                if events is not None:
                    recorded += len(chunk)
                    if recorded > limit:
                        events = None
                    else:
                        events.append(chunk)
                yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            # The client left once its `data: [DONE]` was written (the openai SDK closes
            # there, before a chained router's end arrives): the stream was whole.
            if events and ends_with_done(events[-1]):
                self._cache.put(key, self._entry(ctx, reply, ttl, tuple(events)), ctx.api)
            raise
        if events is not None and not (events and error_code(events[-1])):
            self._cache.put(key, self._entry(ctx, reply, ttl, tuple(events)), ctx.api)

    def _entry(
        self, ctx: RequestContext, reply: Reply, ttl: float, events: tuple[bytes, ...] | None
    ) -> Entry:
        headers = entry_headers(reply.headers)
        return Entry(
            status=reply.status,
            content_type=reply.content_type,
            headers=headers,
            body=reply.body,
            events=events,
            stored_at=self._cache.now(),
            fresh_s=ttl,
            tier=ctx.served_tier,
            reasons=",".join(ctx.reasons),
            audit_id=ctx.cache_of or ctx.audit_id,
            age_at_store=upstream_age(reply.headers.get("Age")),
            revalidate=must_revalidate(reply.headers.get("Cache-Control")),
            vary=vary_values(
                ctx.headers, vary_names(reply.headers.get("Vary")), self._cache.vary_digest
            ),
            model=(ctx.served_by, ctx.served_version, ctx.model_sha256, ctx.served_model),
        )


def _tensor_parts(ctx: RequestContext, cache: ResponseCache) -> tuple[str, ...]:
    """A binary body's tensors, by path and keyed digest (nothing for a JSON-only body)."""
    if ctx.header_length is None:
        return ()
    return tuple(part for item in ctx.tensor_digests(cache.digester).items() for part in item)


def _answer_ttl(reply: Reply, default_s: float) -> float | None:
    headers = reply.headers
    age = upstream_age(headers.get("Age"))
    return response_ttl(headers.get("Cache-Control"), default_s, headers.get("Expires"), age)


def _cache_control(ctx: RequestContext) -> str | None:
    """The request's Cache-Control, every line of it (RFC 9110 §5.3: one list)."""
    getall = getattr(ctx.headers, "getall", None)
    if getall is None:
        return ctx.headers.get("Cache-Control")
    lines = getall("Cache-Control", ())
    return ", ".join(lines) if lines else None


def _not_cached(directives: RequestDirectives) -> None:
    """only-if-cached and nothing stored fits: 504 at once, the upstream is never asked."""
    if directives.only_if_cached:
        raise NotCached("no stored answer fits this request (Cache-Control: only-if-cached)")


async def _replay_events(events: tuple[bytes, ...]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


def _keyed_document(ctx: RequestContext) -> Any:
    """The request as its key sees it. A v2 request's `parameters.timeout` is its latency
    budget, not what the answer depends on: a router in front sets it to what remains of its
    own budget, different on every request, which would make every chained request a miss."""
    doc = ctx.document
    if doc is None or ctx.api != "kserve-v2":
        return doc
    params = doc.get("parameters")
    if not isinstance(params, dict) or "timeout" not in params:
        return doc
    rest = {name: value for name, value in params.items() if name != "timeout"}
    keyed = {name: value for name, value in doc.items() if name != "parameters"}
    if rest:
        keyed["parameters"] = rest
    return keyed
