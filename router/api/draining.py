"""Connections while the site drains (SIGTERM until the listener closes)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from router.api.state import STATUS, ServerStatus
from router.errors import ShuttingDown

# What a stream still going when the drain runs out of time ends with, as an SSE error event.
CUT_BY_SHUTDOWN = ShuttingDown(
    "the server is shutting down: this stream was ended before its upstream finished it"
)


def answer_cut_by_shutdown() -> ShuttingDown:
    """What a request still waiting for its answer then gets instead of a dropped
    connection (a new error each time: a raised one carries its own traceback)."""
    return ShuttingDown(
        "the server is shutting down: this request was ended before its answer was ready"
    )


def close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
    """While the site drains, an answer closes its connection (`Connection: close`): a
    keep-alive client then opens a new one, refused cleanly once the listener is gone, instead
    of sending a request on a connection the shutdown drops unanswered. Call before `prepare`."""
    if request.app[STATUS].draining and not response.prepared:
        response.force_close()


def end_streams(status: ServerStatus) -> int:
    """End every stream still being written (each writes CUT_BY_SHUTDOWN, then its end) and
    every request still waiting for its answer (answered `answer_cut_by_shutdown`): called when
    the drain runs out of time, before the server cancels what is left, which would cut a
    stream with nothing to tell it from a complete one, and drop a request unanswered (its
    record blaming a client that never left). Returns how many."""
    now = asyncio.get_running_loop().time()
    going = [scope for scope in status.streams if not scope.expired()]
    for scope in going:
        scope.reschedule(now)
    return len(going)
