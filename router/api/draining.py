"""Connections while the site drains (SIGTERM until the listener closes)."""

from __future__ import annotations

from aiohttp import web

from router.api.state import STATUS


def close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
    """While the site drains, an answer closes its connection (`Connection: close`): a
    keep-alive client then opens a new one, refused cleanly once the listener is gone, instead
    of sending a request on a connection the shutdown drops unanswered. Call before `prepare`."""
    if request.app[STATUS].draining and not response.prepared:
        response.force_close()
