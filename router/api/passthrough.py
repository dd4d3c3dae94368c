"""Write a plain answer relayed as it arrives (router.relaying): chunk by chunk, with its record
written before its last chunk, and cut (never ended cleanly) when it breaks off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from aiohttp import web

from router.api.draining import CUT_BY_SHUTDOWN, close_when_draining
from router.api.state import STATUS, TRAIL
from router.context import Reply, RequestContext
from router.errors import RouterError
from router.trail import STREAM_ERROR, note_client_gone

CLIENT_STALLED = "client_stalled"  # the client took no chunk of it for the idle time


async def pass_through(
    request: web.Request, reply: Reply, headers: dict[str, str], ctx: RequestContext
) -> web.StreamResponse:
    """The headers go out at once; the record is written once the upstream ended, before the
    last chunk goes out (`Trail.streamed` with `hold_last`), so a client that has the whole
    answer has its record. An upstream that breaks off, a body cut at `max_response_bytes` or a
    drain out of time closes the connection mid-body: the client sees fewer bytes than the
    Content-Length, or a chunked body without its terminator, never a complete answer."""
    source = reply.stream
    assert source is not None
    trail = request.app[TRAIL]
    scope = asyncio.timeout(None)  # ended by a drain out of time (end_streams)
    stream = trail.streamed(
        ctx,
        reply.status,
        source,
        lambda: CUT_BY_SHUTDOWN.code if scope.expired() else "",
        hold_last=True,
    )
    headers["Content-Type"] = reply.content_type
    response = web.StreamResponse(status=reply.status, headers=headers)
    if "Accept-Encoding" in request.headers and not ctx.sized_only:
        # As a buffered answer is (its Content-Length then goes, and the chunked terminator
        # shows the end; an HTTP/1.0 client has no such terminator: it keeps the length).
        response.enable_compression()
    close_when_draining(request, response)
    stalled = asyncio.timeout(None)
    try:
        await response.prepare(request)
        try:
            await write_chunks(request, response, stream, scope, stalled, reply.idle_s)
        except RouterError:
            cut_connection(request, response)
            return response
        except TimeoutError:
            if stalled.expired():
                note_cut(ctx, CLIENT_STALLED)
                cut_connection(request, response, stalled=True)
                return response
            if not scope.expired():
                raise
            # Said by the relay when the drain found it waiting on the upstream; not when it
            # waited on the client (a write).
            note_cut(ctx, CUT_BY_SHUTDOWN.code)
            cut_connection(request, response)
            return response
        await response.write_eof()
    except ConnectionError:
        note_client_gone(ctx)  # its record: what was sent, and that the client left
        return response  # the client left mid-answer: the upstream request is cancelled below
    except asyncio.CancelledError:
        note_client_gone(ctx)  # the handler cancelled mid-write: the client left
        raise
    finally:
        try:
            await stream.aclose()  # the upstream connection and the cluster's place, now
            if isinstance(source, AsyncGenerator):
                await source.aclose()
        finally:
            await trail.client_gone(ctx)  # never begun: no record yet
    return response


async def write_chunks(
    request: web.Request,
    response: web.StreamResponse,
    chunks: AsyncIterator[bytes],
    scope: asyncio.Timeout,
    stalled: asyncio.Timeout,
    idle_s: float | None,
) -> None:
    """Write a relayed answer's or a stream's chunks: within `scope`, which a drain out of
    time ends (registered for it only while entered, the one state it may be ended in), and
    within `stalled`, which ends when the client takes no chunk for `idle_s`, the upstream's
    own idle time: such a client holds the cluster's place and the upstream's connection."""
    streams = request.app[STATUS].streams
    loop = asyncio.get_running_loop()
    async with scope, stalled:
        streams.add(scope)
        try:
            async for chunk in chunks:
                if idle_s is not None:
                    stalled.reschedule(loop.time() + idle_s)
                await response.write(chunk)
                stalled.reschedule(None)
        finally:
            streams.discard(scope)


def note_cut(ctx: RequestContext, code: str) -> None:
    """The record's reason for an answer (relayed, or a stream) the router cut, once: the
    relay names it when the cut finds it waiting on the upstream, not on the client."""
    reason = f"{STREAM_ERROR}:{code}"
    if reason not in ctx.reasons:
        ctx.reasons.append(reason)


def cut_connection(
    request: web.Request, response: web.StreamResponse, *, stalled: bool = False
) -> None:
    """End the connection after what was written (flushed, then closed), so aiohttp's own
    end of the response finds it closing and writes no terminator. A `stalled` client's is
    dropped at once: what waits for it would never flush, and the connection would stay."""
    response.force_close()
    transport = request.transport
    if transport is not None:
        if stalled:
            transport.abort()
        else:
            transport.close()
