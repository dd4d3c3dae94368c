"""The KServe v2 / Open Inference Protocol face, with Triton's repository and stats extensions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from router import __version__
from router.api.admission import TENANT
from router.api.body import check_length, expect_within_limit, read_body
from router.api.current import current
from router.api.respond import default_budget, new_context, run
from router.api.state import BUNDLE, SETTINGS, STATUS, UPSTREAMS
from router.budget import budget_ms
from router.errors import BadRequest
from router.headers import UNREADY, UNREADY_MODELS
from router.inference.repository import ModelRepository, ModelVersion
from router.inference.signature import TensorSpec
from router.inference.stats import ModelStats
from router.upstreams.registry import upstream_routes

EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "statistics"]

_EMPTY_OK = b""


def add_routes(app: web.Application) -> None:
    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    # aiohttp tries routes in order: the hot one first.
    app.router.add_post(model + "/infer", infer, expect_handler=expect_within_limit)
    app.router.add_post(versioned + "/infer", infer, expect_handler=expect_within_limit)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    app.router.add_post(
        "/v2/repository/index", repository_index, expect_handler=expect_within_limit
    )
    app.router.add_get("/v2/models/stats", all_stats)
    for base in (model, versioned):
        app.router.add_get(base, model_metadata)
        app.router.add_get(base + "/ready", model_ready)
        app.router.add_get(base + "/config", model_config)
        app.router.add_get(base + "/stats", model_stats)


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


async def live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    app = request.app
    if app[STATUS].draining or not app[BUNDLE].ready:
        return web.Response(status=503)
    if current(request).models.ready:
        return web.Response(status=200)
    # Not ready (a probe takes the site out of service), but only because of a model that
    # failed to load: a router in front still sends the others here (see headers.UNREADY).
    return web.Response(status=503, headers={UNREADY: UNREADY_MODELS})


async def server_metadata(request: web.Request) -> web.Response:
    site = request.app[SETTINGS].site
    generation = current(request)
    return _json(
        {
            "name": "layer-router",
            "version": __version__,
            "extensions": EXTENSIONS,
            "site": site.id,
            "tier": site.tier.value,
            # None until a verified bundle is active (a remote source not reached yet).
            "policy_revision": None if generation.pending else generation.bundle.revision,
            "connectivity": request.app[UPSTREAMS].connectivity(asyncio.get_running_loop().time()),
            "models": model_summaries(generation.models, _visible(request)),
            # No bundle source, last error or drift: any client reads this; operators have
            # them in the admin listener's /status (`policy`).
        }
    )


def _visible(request: web.Request) -> Callable[[str], bool]:
    """Whether the asking tenant may see a model: lists name only the tenant's models, as
    their metadata answers 403 for the others (a model's name and stats are no one else's)."""
    access = request.get(TENANT)
    return access.may_use if access is not None else _everyone


def _everyone(model: str) -> bool:
    return True


def model_summaries(
    models: ModelRepository, visible: Callable[[str], bool] = _everyone
) -> list[dict[str, Any]]:
    """Each local model with its versions: what an operator compares across sites."""
    return [
        {
            "name": name,
            "versions": [
                {
                    "version": str(v.version),
                    "state": v.state.value,
                    "sha256": v.sha256,
                    "provider": v.provider,
                }
                for _, v in sorted(model.versions.items())
            ],
        }
        for name, model in sorted(models.models.items())
        if visible(name)
    ]


def _entry(request: web.Request) -> ModelVersion:
    info = request.match_info
    return current(request).models.find(info["model"], info.get("version"))


def _upstream_only(request: web.Request) -> bool:
    """A model whose inference goes upstream, so that its metadata, readiness, config and
    stats come from there too: one this site does not hold, or whose version asked for (the
    default one when none is) is not ready or not here, while a cluster lists it (its
    requests go there, `local_not_ready`; the local metadata would list no inputs, and its
    readiness say 503 or 404 to requests that succeed)."""
    info = request.match_info
    name = info["model"]
    clusters = request.app[UPSTREAMS].clusters
    models = current(request).models
    if name not in models.models or not clusters:
        return name not in models.models and bool(clusters)
    if models.ready_here(name, info.get("version")):
        return False
    return any(name in (cluster.models or ()) for cluster in clusters.values())


async def _relay(request: web.Request) -> web.StreamResponse:
    info = request.match_info
    generation = current(request)
    budget = budget_ms(request.headers, generation.settings.routing.kserve_v2_budget_ms)
    ctx = new_context(request, "kserve-v2", info["model"], info.get("version"), budget)
    return await run(request, generation.pipelines.upstream_only, ctx)


async def model_metadata(request: web.Request) -> web.StreamResponse:
    if _upstream_only(request):
        return await _relay(request)
    entry = _entry(request)
    model = current(request).models.models[entry.model]
    doc: dict[str, Any] = {
        "name": entry.model,
        "versions": [str(v) for v in sorted(model.versions)],
        "platform": "onnxruntime_onnx",
        "inputs": [],
        "outputs": [],
    }
    if entry.signature is not None:
        doc["inputs"] = [spec.metadata() for spec in entry.signature.inputs]
        doc["outputs"] = [spec.metadata() for spec in entry.signature.outputs]
    doc["parameters"] = _version_facts(entry)
    return _json(doc)


def _version_facts(entry: ModelVersion) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "version": str(entry.version),
        "state": entry.state.value,
        "sha256": entry.sha256,
        "execution_provider": entry.provider,
    }
    if entry.reason:
        facts["reason"] = entry.reason
    if entry.provider_failures:
        facts["provider_fallbacks"] = [
            {"provider": a.provider, "error": a.error} for a in entry.provider_failures
        ]
    return facts


async def model_ready(request: web.Request) -> web.StreamResponse:
    if _upstream_only(request):
        return await _relay(request)
    entry = _entry(request)
    ok = entry.ready and not request.app[STATUS].draining
    return web.Response(status=200 if ok else 503)


async def model_config(request: web.Request) -> web.StreamResponse:
    if _upstream_only(request):
        return await _relay(request)
    entry = _entry(request)
    doc = entry.config.model_dump(mode="json")
    doc.update(name=entry.model, platform="onnxruntime_onnx", loaded=_version_facts(entry))
    # Triton's own fields beside ours: tools built on tritonclient (perf_analyzer, its
    # image_client example) read `input`/`output` from here, not from the metadata.
    batched = entry.config.max_batch_size > 0
    specs = entry.signature
    doc["backend"] = "onnxruntime"
    doc["input"] = [_triton_tensor(t, batched, True) for t in specs.inputs] if specs else []
    doc["output"] = [_triton_tensor(t, batched, False) for t in specs.outputs] if specs else []
    return _json(doc)


def _triton_tensor(spec: TensorSpec, batched: bool, is_input: bool) -> dict[str, Any]:
    """A tensor as Triton's model config states it: TYPE_ names (BYTES is TYPE_STRING), and
    dims without the batch dimension when the model batches."""
    name = spec.datatype.name
    shape = spec.reported_shape
    dims = shape[1:] if batched and shape else shape
    doc: dict[str, Any] = {
        "name": spec.name,
        "data_type": "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}",
        "dims": dims,
    }
    if is_input:
        doc["format"] = "FORMAT_NONE"
    return doc


async def repository_index(request: web.Request) -> web.Response:
    body = await read_body(request)
    if body:  # an empty body asks for everything; blank is not JSON
        try:
            options = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("repository index request must be JSON") from None
        if not isinstance(options, dict):
            raise BadRequest("repository index request must be a JSON object")
    else:
        options = {}
    only_ready = options.get("ready", False)
    if not isinstance(only_ready, bool):
        raise BadRequest("'ready' must be a boolean")
    tier = request.app[SETTINGS].site.tier.value
    visible = _visible(request)
    index = []
    for model in current(request).models.models.values():
        if not visible(model.name):
            continue
        if model.error and not only_ready:
            index.append({"name": model.name, "state": "UNAVAILABLE", "reason": model.error})
        for entry in model.versions.values():
            if only_ready and not entry.ready:
                continue
            item = {"name": model.name, "version": str(entry.version), "state": entry.state.value}
            item["reason"] = entry.reason
            item["tier"] = tier
            index.append(item)
    index += _upstream_entries(request, visible, only_ready)
    return _json(index)


def _upstream_entries(
    request: web.Request, visible: Callable[[str], bool], only_ready: bool = False
) -> list[dict[str, Any]]:
    """Model versions only upstream clusters serve (a version of a local model that is not
    here too: requests naming it go there), one entry per name and version (Triton's index
    lists versions, never a model twice): `tier` and `cluster` name the preferred route (the
    nearest cluster), `tiers` and `clusters` every one, in that order.

    The versions are those any cluster reported, so a router in front can pin them too; a
    model no cluster reports versions of has one entry of version "". A cluster that lists a
    model without versions is a route to each reported version (requests are routed by name),
    never an entry of its own beside them. With `only_ready` (`{"ready": true}`) a cluster
    with no live endpoint is no route: a model only it serves cannot be run now (its
    `…/ready` answers 503), so the index does not call it ready."""
    local = current(request).models.models
    now = asyncio.get_running_loop().time()
    # Per name, in preference order: each cluster serving it and the versions it reported.
    serving: dict[str, list[tuple[str, str, frozenset[str]]]] = {}
    for cluster in upstream_routes(request.app[UPSTREAMS].clusters.values()):
        if only_ready and not cluster.live(now):
            continue
        for name in sorted(cluster.models or frozenset()):
            if visible(name):
                reported = cluster.versions.get(name, frozenset())
                serving.setdefault(name, []).append((cluster.tier_of(name), cluster.name, reported))
    routes: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for name, clusters in serving.items():
        versions = frozenset().union(*(reported for _, _, reported in clusters))
        # The site's own entries, listed above: under the ready filter only its ready
        # versions are (a broken one's requests go upstream, so its route there is listed).
        here = {
            str(v)
            for v, entry in (local[name].versions.items() if name in local else ())
            if entry.ready or not only_ready
        }
        for version in sorted(versions) or [""]:
            if name in local and (not version or version in here):
                continue  # listed above as this site's own
            routes[(name, version)] = [
                (tier, cluster)
                for tier, cluster, reported in clusters
                if version in reported or not reported
            ]
    entries = []
    for (name, version), found in sorted(routes.items()):
        tiers = [tier for tier, _ in found]
        entries.append(
            {
                "name": name,
                "version": version,
                "state": "READY",
                "reason": "",
                "tier": found[0][0],
                "cluster": found[0][1],
                "tiers": sorted(set(tiers), key=tiers.index),
                "clusters": [cluster for _, cluster in found],
            }
        )
    return entries


async def model_stats(request: web.Request) -> web.StreamResponse:
    if _upstream_only(request):
        return await _relay(request)
    info = request.match_info
    repo = current(request).models
    if info.get("version") is None:
        repo.find(info["model"])  # 404 for an unknown model
        entries = list(repo.models[info["model"]].versions.values())
    else:
        entries = [_entry(request)]
    return _json({"model_stats": [_stats(e) for e in entries]})


async def all_stats(request: web.Request) -> web.Response:
    repo = current(request).models
    visible = _visible(request)
    entries = [e for m in repo.models.values() if visible(m.name) for e in m.versions.values()]
    return _json({"model_stats": [_stats(e) for e in entries]})


def _stats(entry: ModelVersion) -> dict[str, Any]:
    # A version that never loaded has Triton's whole shape too, all zeros: clients index it.
    stats = entry.runner.stats if entry.runner is not None else ModelStats()
    return stats.as_dict(entry.model, str(entry.version))


async def infer(request: web.Request) -> web.StreamResponse:
    generation = current(request)
    check_length(request)
    info = request.match_info
    model = info["model"]
    budget = budget_ms(request.headers, default_budget(generation, "kserve-v2", model))
    ctx = new_context(request, "kserve-v2", model, info.get("version"), budget)
    ctx.header_length = _header_length(request)
    ctx.body = await read_body(request)
    return await run(request, generation.pipelines.v2_infer, ctx)


def _header_length(request: web.Request) -> int | None:
    raw = request.headers.get("Inference-Header-Content-Length")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):  # "²" passes isdigit() and fails int()
        raise BadRequest("Inference-Header-Content-Length must be a non-negative integer")
    return int(raw)
