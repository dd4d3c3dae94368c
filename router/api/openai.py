"""The OpenAI-compatible face: chat, completions and embeddings are routed to whichever tier
serves the model (streams pass through chunk by chunk); `GET /v1/models` lists every tier's."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from router.api.admission import TENANT
from router.api.body import check_length, expect_within_limit, read_body
from router.api.current import current
from router.api.respond import default_budget, new_context, run
from router.api.state import SETTINGS, UPSTREAMS
from router.budget import budget_ms
from router.errors import ModelNotFound
from router.settings import Protocol
from router.upstreams.registry import upstream_routes

_STARTED = int(time.time())


def add_routes(app: web.Application) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        app.router.add_post(path, relay, expect_handler=expect_within_limit)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)  # ids may hold a slash


async def relay(request: web.Request) -> web.StreamResponse:
    generation = current(request)
    check_length(request)
    budget = budget_ms(request.headers, default_budget(generation, "openai", None))
    ctx = new_context(request, "openai", "", None, budget)
    ctx.body = await read_body(request)
    return await run(request, generation.pipelines.openai, ctx)


async def list_models(request: web.Request) -> web.Response:
    return _json({"object": "list", "data": _listed(request)})


async def retrieve_model(request: web.Request) -> web.Response:
    """One entry of the list, as the openai SDK's `models.retrieve` asks for it."""
    name = request.match_info["model"]
    for item in _listed(request):
        if item["id"] == name:
            return _json(item)
    raise ModelNotFound(f"unknown model '{name}'")


def _json(doc: object) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


def _listed(request: web.Request) -> list[dict[str, object]]:
    """One entry per model id, as OpenAI's list has (a UI would show duplicates otherwise):
    `tier` and `served_by` name the preferred route (local first, then the nearest cluster),
    `tiers` and `served_by_all` every one, in that order; as this caller may see them."""
    app = request.app
    tier = app[SETTINGS].site.tier.value
    generation = current(request)
    routing = generation.settings.routing.models
    routes: dict[str, list[tuple[str, str]]] = {}  # per id: (tier, source) in preference order
    models = generation.models
    for name in models.models:
        route = routing.get(name)
        # A heavy model is never run here, and one none of whose versions loaded serves
        # nothing here: listed, either would make a router in front (whose discovery reads
        # this list too) send its requests here.
        if (route is None or not route.heavy) and models.ready_here(name):
            routes.setdefault(name, []).append((tier, "local"))
    for cluster in upstream_routes(app[UPSTREAMS].clusters.values()):
        if Protocol.OPENAI not in cluster.settings.protocols and not cluster.models:
            continue
        for name in sorted(cluster.models or ()):
            routes.setdefault(name, []).append((cluster.tier_of(name), cluster.name))
    access = request.get(TENANT)
    if access is not None and access.models is not None:
        routes = {name: found for name, found in routes.items() if access.may_use(name)}
    return [_model(name, found) for name, found in routes.items()]


def _model(name: str, routes: list[tuple[str, str]]) -> dict[str, object]:
    (tier, source), tiers = routes[0], [tier for tier, _ in routes]
    return {
        "id": name,
        "object": "model",
        "created": _STARTED,
        "owned_by": "layer-router",
        "tier": tier,
        "served_by": source,
        "tiers": sorted(set(tiers), key=tiers.index),  # each once, in the routes' order
        "served_by_all": [source for _, source in routes],
    }
