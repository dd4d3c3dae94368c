"""Hot reload inside one process: the model repository is polled, a repository with broken
models is refused (the running models stay), and reload hooks see every reload."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from aiohttp import web
from aiohttp.typedefs import Handler

from router.api.admin import status_document
from router.api.state import RELOADER
from router.settings import Settings, Tier
from router.testing import (
    AppThread,
    Behaviour,
    FakeUpstream,
    RouterThread,
    chat_forwarding_settings,
    identity_model,
    write_repository,
)
from router.upstreams.registry import Upstreams
from router.upstreams.tls import TlsContexts


def wait_for(check: Callable[[], bool], timeout_s: float) -> None:
    give_up = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < give_up, "condition not met in time"
        time.sleep(0.05)


def served_models(site: RouterThread) -> list[str]:
    models = httpx.get(site.url + "/v2", timeout=10).json()["models"]
    return [model["name"] for model in models]


def app(site: RouterThread) -> web.Application:
    assert site.app is not None
    return site.app


async def reload(site: RouterThread) -> bool:
    return await app(site)[RELOADER].reload("test")


def settings(repository: Path, poll_s: float = 0.0) -> Settings:
    return Settings.model_validate(
        {
            "models": {"repository": repository, "inference_threads": 1},
            "reload": {"poll_interval_s": poll_s},
        }
    )


def test_a_polled_repository_serves_a_new_model(tmp_path: Path) -> None:
    """A model added to the repository is served after the next poll, without SIGHUP."""
    repository = write_repository(tmp_path / "repo", {"first": {1: identity_model("FP32")}})
    with RouterThread(settings(repository, poll_s=0.2)) as site:
        assert served_models(site) == ["first"]
        write_repository(repository, {"second": {1: identity_model("FP32")}})
        wait_for(lambda: served_models(site) == ["first", "second"], 10)
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [3]}]}
        answer = httpx.post(site.url + "/v2/models/second/infer", json=body, timeout=10)
        assert answer.status_code == 200


def test_a_repository_with_a_broken_model_is_not_swapped_in(tmp_path: Path) -> None:
    """A reload that would load a broken model keeps the working repository and says why."""
    repository = write_repository(tmp_path / "repo", {"good": {1: identity_model("FP32")}})
    with RouterThread(settings(repository)) as site:
        write_repository(repository, {"broken": {1: b"not an onnx model"}})
        assert site.call_async(reload, site) is False
        assert served_models(site) == ["good"]
        reload_state = site.call_async(status_document, app(site))["policy"]["reload"]
        assert reload_state["failures"] == 1
        assert "broken" in reload_state["last_error"]
        assert httpx.get(site.url + "/v2/health/ready", timeout=10).status_code == 200


def test_reload_hooks_see_each_reload(tmp_path: Path) -> None:
    """A plug-in (e.g. TLS material) registered in the reloader's hooks runs on every reload."""
    repository = write_repository(tmp_path / "repo", {"good": {1: identity_model("FP32")}})
    seen: list[Settings] = []

    async def hook(new: Settings) -> None:
        seen.append(new)

    with RouterThread(settings(repository)) as site:
        site.call(lambda: app(site)[RELOADER].hooks.append(hook))
        site.call_async(reload, site)
        site.call_async(reload, site)
    assert len(seen) == 2


def test_polling_does_not_retry_a_repository_that_failed_to_load(tmp_path: Path) -> None:
    """A broken repository is tried once per change, not reloaded on every poll."""
    repository = write_repository(tmp_path / "repo", {"good": {1: identity_model("FP32")}})
    with RouterThread(settings(repository, poll_s=0.1)) as site:
        write_repository(repository, {"broken": {1: b"not an onnx model"}})

        def failures() -> int:
            doc = site.call_async(status_document, app(site))
            return int(doc["policy"]["reload"]["failures"])

        wait_for(lambda: failures() >= 1, 10)
        time.sleep(0.6)  # six more polls
        assert failures() == 1
        assert served_models(site) == ["good"]


def test_polling_does_not_retry_a_config_change_that_failed_with_the_repository(
    tmp_path: Path,
) -> None:
    """A changed config file that cannot go live (the repository beside it is broken) is
    tried once, not reloaded (every model loaded again, an error logged) on every poll."""
    repository = write_repository(tmp_path / "repo", {"good": {1: identity_model("FP32")}})
    config = {"now": settings(repository, poll_s=0.1)}
    with RouterThread(config["now"], read_settings=lambda: config["now"]) as site:
        write_repository(repository, {"broken": {1: b"not an onnx model"}})
        changed = config["now"].model_dump()
        changed["routing"]["kserve_v2_budget_ms"] = 1234
        config["now"] = Settings.model_validate(changed)

        def failures() -> int:
            doc = site.call_async(status_document, app(site))
            return int(doc["policy"]["reload"]["failures"])

        wait_for(lambda: failures() >= 1, 10)
        time.sleep(0.6)  # six more polls
        assert failures() == 1


CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}]}


def test_a_reload_replans_upstream_clusters_and_lets_in_flight_requests_finish() -> None:
    """A reloaded config that moves the cluster to another endpoint sends new requests there,
    while a request already on the old endpoint finishes there; a removed cluster serves none."""
    old = FakeUpstream("central", behaviour=Behaviour(delay_s=1.0))
    new = FakeUpstream("central")
    with AppThread(old.app) as old_server, AppThread(new.app) as new_server:
        config = {"now": chat_forwarding_settings(old_server.url)}
        with RouterThread(config["now"], read_settings=lambda: config["now"]) as site:
            url = site.url + "/v1/chat/completions"
            with ThreadPoolExecutor(1) as pool:
                in_flight = pool.submit(httpx.post, url, json=CHAT, timeout=10)
                wait_for(lambda: len(old.received) == 1, 5)
                config["now"] = chat_forwarding_settings(new_server.url)
                assert site.call_async(reload, site) is True
                assert httpx.post(url, json=CHAT, timeout=10).status_code == 200
                assert in_flight.result().status_code == 200
            assert (len(old.received), len(new.received)) == (1, 1)

            config["now"] = Settings.model_validate({"cache": {"enabled": False}})
            site.call_async(reload, site)
            answer = httpx.post(url, json=CHAT, timeout=10)
            assert answer.status_code == 404
            assert len(new.received) == 1


async def test_unchanged_clusters_keep_their_health_across_a_reload() -> None:
    """Re-planning with the same cluster settings changes nothing: same cluster objects, the
    endpoint health learnt so far kept."""
    settings = chat_forwarding_settings("http://127.0.0.1:9")
    upstreams = Upstreams.from_settings(settings.upstreams, offline=True)
    try:
        before = upstreams.clusters["central"]
        clients = TlsContexts.from_settings(settings).clients
        assert await upstreams.reconfigure(settings.upstreams, True, clients, 0.1) == []
        assert upstreams.clusters["central"] is before
        moved = chat_forwarding_settings("http://127.0.0.1:10")
        assert await upstreams.reconfigure(moved.upstreams, True, clients, 0.1) == ["central"]
        assert upstreams.clusters["central"] is not before
    finally:
        await upstreams.close()


async def test_a_replanned_cluster_keeps_counting_where_the_old_one_stopped() -> None:
    """A cluster replaced by a reload (same name and tier) carries on its counters, which
    /metrics exposes as counters: they must not fall back to 0 in a running process. A
    cluster moved to another tier starts a series of its own, from 0."""
    settings = chat_forwarding_settings("http://127.0.0.1:9")
    upstreams = Upstreams.from_settings(settings.upstreams, offline=True)
    try:
        upstreams.clusters["central"].counters.requests = 3
        upstreams.clusters["central"].counters.failures = 2
        clients = TlsContexts.from_settings(settings).clients
        moved = chat_forwarding_settings("http://127.0.0.1:10")
        assert await upstreams.reconfigure(moved.upstreams, True, clients, 0.1) == ["central"]
        counters = upstreams.clusters["central"].counters
        assert (counters.requests, counters.failures) == (3, 2)
        regional = moved.model_copy(
            update={"upstreams": (moved.upstreams[0].model_copy(update={"tier": Tier.REGIONAL}),)}
        )
        assert await upstreams.reconfigure(regional.upstreams, True, clients, 0.1) == ["central"]
        assert upstreams.clusters["central"].counters.requests == 0
    finally:
        await upstreams.close()


def discovering_settings(upstream_url: str) -> Settings:
    """One central cluster that learns its models by discovery (none listed)."""
    cluster = {
        "name": "central",
        "tier": "central",
        "protocols": ["openai"],
        "endpoints": [{"url": upstream_url}],
        "health_check": {"enabled": False},
    }
    return Settings.model_validate({"upstreams": [cluster], "cache": {"enabled": False}})


def test_requests_during_a_replanned_clusters_discovery_are_still_served() -> None:
    """While a reload's re-planned cluster is still discovering what its upstream serves, a
    request for a model the old cluster served is answered (by the old cluster), never 404."""
    old, new = FakeUpstream("central"), FakeUpstream("central")
    asked, release = threading.Event(), threading.Event()

    def gated() -> web.Application:
        @web.middleware
        async def hold_discovery(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path == "/v1/models":
                asked.set()
                await asyncio.to_thread(release.wait, 10)
            return await handler(request)

        application = new.app()
        application.middlewares.append(hold_discovery)
        return application

    with AppThread(old.app) as old_server, AppThread(gated) as new_server:
        config = {"now": discovering_settings(old_server.url)}
        with RouterThread(config["now"], read_settings=lambda: config["now"]) as site:
            url = site.url + "/v1/chat/completions"
            config["now"] = discovering_settings(new_server.url)
            with ThreadPoolExecutor(1) as pool:
                try:
                    reloading = pool.submit(site.call_async, reload, site)
                    assert asked.wait(5)
                    during = httpx.post(url, json=CHAT, timeout=10)
                finally:
                    release.set()
                assert reloading.result() is True
            assert during.status_code == 200
            assert httpx.post(url, json=CHAT, timeout=10).status_code == 200
            assert (len(old.requests_to("/v1/chat")), len(new.requests_to("/v1/chat"))) == (1, 1)


RGB = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [0.3, 0.6, 0.9]}]}


def colour_site(tmp_path: Path, edge_models: Path) -> tuple[Path, Settings]:
    """A copy of the demo colour classifier (versions 1 and 2), the answer cache on."""
    repository = tmp_path / "models"
    shutil.copytree(edge_models / "color_classifier", repository / "color_classifier")
    config = Settings.model_validate(
        {"models": {"repository": repository, "inference_threads": 1}, "cache": {"enabled": True}}
    )
    return repository / "color_classifier", config


def infer(site: RouterThread, path: str = "/v2/models/color_classifier/infer") -> httpx.Response:
    answer = httpx.post(site.url + path, json=RGB, timeout=10)
    assert answer.status_code == 200
    return answer


def test_a_model_file_replaced_on_disk_is_not_answered_from_the_cache(
    tmp_path: Path, edge_models: Path
) -> None:
    """Version 2's file replaced by another model and reloaded: the next request is answered
    by the new artefact, not by the old one's cached answer."""
    model, config = colour_site(tmp_path, edge_models)
    with RouterThread(config, read_settings=lambda: config) as site:
        before = infer(site)
        assert infer(site).headers["X-Cache"] == "HIT"
        shutil.copyfile(model / "1" / "model.onnx", model / "2" / "model.onnx")
        assert site.call_async(reload, site) is True
        after = infer(site)
        assert after.headers["X-Cache"] == "MISS"
        v1 = infer(site, "/v2/models/color_classifier/versions/1/infer").json()["outputs"]
        assert after.json()["outputs"] == v1 != before.json()["outputs"]


def test_a_new_highest_version_answers_requests_naming_none(
    tmp_path: Path, edge_models: Path
) -> None:
    """A version 3 added and reloaded answers the next request naming no version (Triton's
    default), not the cache's copy of version 2's answer."""
    model, config = colour_site(tmp_path, edge_models)
    with RouterThread(config, read_settings=lambda: config) as site:
        assert infer(site).json()["model_version"] == "2"
        shutil.copytree(model / "1", model / "3")
        assert site.call_async(reload, site) is True
        assert infer(site).json()["model_version"] == "3"


def test_a_stream_outlasting_the_drain_survives_a_replanned_cluster() -> None:
    """A chat stream longer than drain_timeout_s, in flight when a reload replaces its cluster,
    runs to its end: the old cluster's connections close when its last request is done."""
    upstream = FakeUpstream("central", behaviour=Behaviour(stream_chunks=8, stream_delay_s=0.2))
    with AppThread(upstream.app) as server:

        def config(timeout_ms: int) -> Settings:
            base = chat_forwarding_settings(server.url, server={"drain_timeout_s": 0.1})
            cluster = base.upstreams[0].model_copy(update={"request_timeout_ms": timeout_ms})
            return base.model_copy(update={"upstreams": (cluster,)})

        now = {"config": config(30_000)}
        with RouterThread(now["config"], read_settings=lambda: now["config"]) as site:
            body = {**CHAT, "stream": True}
            with httpx.stream("POST", site.url + "/v1/chat/completions", json=body) as answer:
                events = answer.iter_lines()
                assert next(events).startswith("data: ")
                now["config"] = config(29_000)
                assert site.call_async(reload, site) is True
                rest = [line for line in events if line.startswith("data: ")]
            assert rest[-1] == "data: [DONE]"
            assert not any('"error"' in line for line in rest)
