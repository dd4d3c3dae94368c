"""`GET /openapi.json`: the HTTP API described in `openapi.yaml` next to this module, read once
when the app is built and served as JSON."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import orjson
import yaml
from aiohttp import web

from router import __version__

SPEC_FILE = Path(__file__).with_name("openapi.yaml")
SPEC = web.AppKey("openapi_spec", bytes)


def load_spec() -> dict[str, object]:
    doc = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), f"{SPEC_FILE} holds no mapping"
    doc["info"]["version"] = __version__
    return doc


@cache
def spec_json() -> bytes:
    """Parsed once per process: many apps (tests, workers) share the same document."""
    return orjson.dumps(load_spec())


def add_routes(app: web.Application) -> None:
    app[SPEC] = spec_json()
    app.router.add_get("/openapi.json", openapi_json)


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[SPEC], content_type="application/json")
