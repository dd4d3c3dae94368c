"""Long plain answers relayed as they arrive: which requests may have theirs relayed, and the
relayed bytes themselves.

A forwarded answer that is no SSE stream used to be read whole before its first byte went out:
up to `max_response_bytes` (64 MiB) held per request, and a time to first byte that grew with
the answer. Now one longer than its cluster's `relay_over_bytes` flows through in the chunks it
arrives in, unless something needs it whole: redacted values to restore in it (tokens were
issued for this request), the response cache keeping it (it holds it whole anyway), identical
coalesced requests sharing it, or a spool sample of it due. Only a 200 answer is relayed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from multidict import CIMultiDictProxy

from router.cache import response_ttl, vary_names
from router.context import RequestContext
from router.errors import StreamBroken, UpstreamError, UpstreamResponseTooLarge
from router.headers import downstream_response_headers
from router.privacy import Privacy
from router.upstreams.cluster import Cluster
from router.upstreams.forward import Forwarded
from router.upstreams.relay import Relay, declared_length


def relay_for(ctx: RequestContext, cluster: Cluster, privacy: Privacy) -> Relay | None:
    """The request's Relay, None when its answer is needed whole whatever it is. Asked once
    the request's view for the cluster is made (its tokens issued)."""
    if ctx.stream or ctx.shared or (ctx.vault is not None and len(ctx.vault)):
        return None
    draw = ctx.sample_draw
    if draw is not None and draw < privacy.bundle.sampling.rate(ctx.model):
        return None
    cache_ttl = ctx.cache_ttl
    sized_only = ctx.sized_only

    def allows(status: int, headers: CIMultiDictProxy[str]) -> bool:
        if status != 200:
            return False  # errors are short; and a refused escalation drops its answer
        if sized_only and exact_length(headers) is None:
            return False  # an HTTP/1.0 client could not tell it cut from complete
        return cache_ttl is None or not _kept(downstream_response_headers(headers), cache_ttl)

    return Relay(cluster.settings.relay_over_bytes, allows)


def _kept(headers: Mapping[str, str], default_s: float) -> bool:
    """Whether the response cache keeps a 200 answer with these headers (LookupCache._keep)."""
    if "*" in vary_names(headers.get("Vary")):
        return False
    return bool(response_ttl(headers.get("Cache-Control"), default_s, headers.get("Expires")))


def exact_length(upstream: CIMultiDictProxy[str]) -> str | None:
    """The upstream's Content-Length when it counts the bytes relayed: not when they were
    inflated from a Content-Encoding."""
    encoding = upstream.get("Content-Encoding", "").strip().lower()
    length = declared_length(upstream)
    return str(length) if length is not None and encoding in ("", "identity") else None


async def relayed(forwarded: Forwarded) -> AsyncIterator[bytes]:
    """The answer's bytes as they arrive, cut at the cluster's `max_response_bytes`. A failure
    after the first byte went out raises (StreamBroken; UpstreamResponseTooLarge past the
    limit): the handler then cuts the connection, so the answer never looks complete. However
    it ends short (broken, cut, the client gone), the upstream request is cancelled."""
    completed = False
    sent = 0
    try:
        if forwarded.first:
            sent = len(forwarded.first)
            yield forwarded.first
        assert forwarded.rest is not None, "a relayed answer comes open"
        async for chunk in forwarded.rest:
            sent += len(chunk)
            if sent > forwarded.limit:
                raise UpstreamResponseTooLarge(
                    f"{forwarded.where}: response larger than {forwarded.limit} bytes"
                )
            yield chunk
        completed = True
    except UpstreamResponseTooLarge:
        raise
    except UpstreamError as exc:
        raise StreamBroken(f"{exc.message} after the answer began") from None
    finally:
        if not completed:
            forwarded.response.abort()
        forwarded.release()
