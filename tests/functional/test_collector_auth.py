"""Sites authenticate to the central collector: a real central layer-router with two sites'
key hashes, uploads over loopback HTTP (and HTTPS with client certificates), and edge routers
whose real drainers upload their spools with the key from their key file. The keys are
canaries: no log line, error body, metric or status page may show one."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import shutil
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import trustme
from aiohttp.test_utils import TestServer
from test_serve_process import spawn, wait_ready

from router.api.state import COLLECTOR_STORE, RELOADER, SPOOL
from router.app import build_app
from router.errors import ConfigError
from router.resources import default_policy_bundle
from router.settings import PolicySettings, Settings
from router.spool import Counts, Spool
from router.spool.collector import COLLECTOR_PATH, CollectorStore
from router.spool.sites import SITE_HEADER
from router.spool.wire import NDJSON
from router.tenancy import hash_key
from router.testing import RouterThread
from router.upstreams.tls import listener_context

TIMEOUT = aiohttp.ClientTimeout(total=10)


def fixed_key(name: str) -> str:
    """A deterministic key for the tests (never a real secret)."""
    return "lr-test-" + hashlib.sha256(name.encode()).hexdigest()


KEY_A, KEY_B, WRONG = fixed_key("site-a"), fixed_key("site-b"), fixed_key("nobody")
CANARIES = (KEY_A, KEY_B, WRONG)


def batch(*keys: str, payload: bytes = b"x") -> bytes:
    lines = (
        orjson.dumps(
            {
                "key": k,
                "kind": "audit",
                "created": time.time(),
                "payload": base64.b64encode(payload).decode(),
            }
        )
        for k in keys
    )
    return b"".join(line + b"\n" for line in lines)


def headers(key: str | None = None, site: str | None = None) -> dict[str, str]:
    sent = {"Content-Type": NDJSON}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if site is not None:
        sent[SITE_HEADER] = site
    return sent


def central_settings(
    tmp_path: Path,
    sites: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
    **server: Any,
) -> Settings:
    models = tmp_path / "central-models"
    models.mkdir(exist_ok=True)
    return Settings.model_validate(
        {
            "site": {"id": "hq", "tier": "central"},
            "models": {"repository": models},
            "server": server,
            "auth": auth or {},
            "spool": {
                "collector_sites": sites or {"site-a": hash_key(KEY_A), "site-b": hash_key(KEY_B)}
            },
        }
    )


@pytest.fixture(autouse=True)
def own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own state folder: its collector store starts empty."""
    folder = tmp_path / "state"
    monkeypatch.setenv("LAYER_ROUTER_STATE_DIR", str(folder))
    return folder


@pytest.fixture
def central(tmp_path: Path) -> Iterator[RouterThread]:
    """A central router that knows site-a's and site-b's key hashes, with its admin listener."""
    with RouterThread(central_settings(tmp_path), admin=True, access_log=True) as server:
        yield server


def edge(tmp_path: Path, central_url: str, site: str, key: str | None) -> RouterThread:
    """An edge router named `site` whose spool drains to `central_url` with `key` (if any)."""
    spool: dict[str, Any] = {"path": tmp_path / f"{site}.sqlite3", "collector_url": central_url}
    if key is not None:
        key_file = tmp_path / f"{site}.key"
        key_file.write_text(key + "\n")
        spool["collector_key_file"] = key_file
    models = tmp_path / f"{site}-models"
    models.mkdir(exist_ok=True)
    settings = Settings.model_validate(
        {"site": {"id": site}, "models": {"repository": models}, "spool": spool}
    )
    return RouterThread(settings, admin=True, access_log=True)


async def post(url: str, body: bytes, sent: dict[str, str]) -> tuple[int, bytes, Any]:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.post(url + COLLECTOR_PATH, data=body, headers=sent) as response,
    ):
        return response.status, await response.read(), response.headers


async def admin_pages(server: RouterThread) -> bytes:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        pages = []
        for page in ("/metrics", "/status"):
            async with http.get(server.admin_url + page) as response:
                assert response.status == 200
                pages.append(await response.read())
    return b"".join(pages)


async def admin_page(server: RouterThread, page: str) -> bytes:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.get(server.admin_url + page) as response,
    ):
        assert response.status == 200
        return await response.read()


def spool_of(server: RouterThread) -> Spool:
    assert server.app is not None
    spool = server.app[SPOOL].spool
    assert spool is not None
    return spool


async def drained(server: RouterThread, produced: int, timeout_s: float = 15) -> Counts:
    """The edge's spool counts once `produced` records were all delivered."""
    spool = spool_of(server)
    deadline = time.monotonic() + timeout_s
    while True:
        counts = await asyncio.to_thread(server.call_async, spool.counts)
        if counts.produced >= produced and counts.delivered == counts.produced:
            return counts
        assert time.monotonic() < deadline, counts
        await asyncio.sleep(0.1)


async def put(server: RouterThread, *keys: str) -> None:
    """Records spooled on the router's own loop, as its request path would."""
    spool = spool_of(server)
    for key in keys:
        stored = await asyncio.to_thread(
            server.call_async, partial(spool.put, key=key), "audit", b"{}"
        )
        assert stored == key


def assert_no_canary(*texts: bytes | str) -> None:
    for text in texts:
        data = text.encode() if isinstance(text, str) else text
        for canary in CANARIES:
            assert canary.encode() not in data
            assert hash_key(canary).encode() not in data


class TestCollectorAuthentication:
    async def test_a_sites_key_uploads_and_duplicates_are_stored_once(
        self, central: RouterThread
    ) -> None:
        """site-a's key on a batch naming site-a: stored; the same batch again: duplicates."""
        body, sent = batch("audit:a1", "audit:a2"), headers(KEY_A, "site-a")
        first = await post(central.url, body, sent)
        second = await post(central.url, body, sent)
        assert first[0] == second[0] == 200
        assert orjson.loads(first[1]) == {
            "accepted": ["audit:a1", "audit:a2"],
            "new": 2,
            "duplicates": 0,
        }
        assert orjson.loads(second[1])["duplicates"] == 2

    async def test_no_key_or_a_wrong_key_is_401(self, central: RouterThread) -> None:
        """Without a key, or with one no site holds: 401 with a Bearer challenge and the
        OpenAI-shaped error, nothing stored (a good upload of the same key is new after)."""
        for sent in (headers(site="site-a"), headers(WRONG, "site-a"), headers(WRONG)):
            status, body, answer_headers = await post(central.url, batch("audit:x"), sent)
            assert status == 401
            assert orjson.loads(body)["error"]["code"] == "unauthorized"
            assert answer_headers["WWW-Authenticate"].startswith("Bearer")
            assert_no_canary(body, str(dict(answer_headers)))
        status, body, _ = await post(central.url, batch("audit:x"), headers(KEY_A, "site-a"))
        assert (status, orjson.loads(body)["new"]) == (200, 1)

    async def test_one_sites_key_for_anothers_batch_is_403(self, central: RouterThread) -> None:
        """site-a's key on a batch naming site-b: 403 site_mismatch, nothing stored."""
        status, body, _ = await post(central.url, batch("audit:b1"), headers(KEY_A, "site-b"))
        assert status == 403
        assert orjson.loads(body)["error"]["code"] == "site_mismatch"
        assert_no_canary(body)
        status, body, _ = await post(central.url, batch("audit:b1"), headers(KEY_B, "site-b"))
        assert (status, orjson.loads(body)["new"]) == (200, 1)

    async def test_a_record_naming_another_site_is_403(self, central: RouterThread) -> None:
        """site-a's key on a batch whose audit record says it is site-b's: 403 site_mismatch,
        nothing of the batch stored; the record naming site-a is taken."""
        forged = batch("audit:f0", "audit:f1", payload=b'{"id":"f1","site":"site-b"}')
        status, body, _ = await post(central.url, forged, headers(KEY_A, "site-a"))
        assert (status, orjson.loads(body)["error"]["code"]) == (403, "site_mismatch")
        own = batch("audit:f0", "audit:f1", payload=b'{"id":"f1","site":"site-a"}')
        status, body, _ = await post(central.url, own, headers(KEY_A, "site-a"))
        assert (status, orjson.loads(body)["new"]) == (200, 2)

    async def test_status_and_metrics_show_what_the_collector_did(
        self, central: RouterThread
    ) -> None:
        """An operator of the central tier sees batches, stored and duplicate records,
        refusals by code and each site's last upload, in /status and /metrics."""
        good = headers(KEY_A, "site-a")
        assert (await post(central.url, batch("audit:s1", "audit:s2"), good))[0] == 200
        assert (await post(central.url, batch("audit:s1"), good))[0] == 200
        assert (await post(central.url, batch("audit:s3"), headers(WRONG, "site-a")))[0] == 401
        assert (await post(central.url, batch("audit:s3"), headers(KEY_A, "site-b")))[0] == 403
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            async with http.get(central.admin_url + "/status") as response:
                status = orjson.loads(await response.read())["collector"]
            async with http.get(central.admin_url + "/metrics") as response:
                metrics = (await response.read()).decode()
        assert (status["enabled"], status["batches"]) == (True, 2)
        assert (status["stored"], status["duplicates"]) == (2, 1)
        assert status["refused"] == {"site_mismatch": 1, "unauthorized": 1}
        assert list(status["sites"]) == ["site-a"]
        assert status["sites"]["site-a"]["records"] == 3
        assert "layer_router_collector_batches_total 2.0" in metrics
        assert 'layer_router_collector_records_total{outcome="duplicate"} 1.0' in metrics
        assert 'layer_router_collector_refusals_total{code="unauthorized"} 1.0' in metrics
        assert_no_canary(metrics, orjson.dumps(status))

    async def test_edge_with_its_key_file_drains_to_the_central(
        self, central: RouterThread, tmp_path: Path, own_state: Path
    ) -> None:
        """A real edge's drainer uploads with the key from its key file: the spool drains, the
        central holds the records as site-a's, and a resend of one is a duplicate."""
        with edge(tmp_path, central.url, "site-a", KEY_A) as site:
            await put(site, "audit:e1", "audit:e2", "audit:e3")
            counts = await drained(site, 3)
        assert (counts.delivered, counts.pending) == (3, 0)
        assert counts.balanced
        status, body, _ = await post(central.url, batch("audit:e2"), headers(KEY_A, "site-a"))
        assert (status, orjson.loads(body)["duplicates"]) == (200, 1)
        central.stop()  # its store is its own while it runs
        store = CollectorStore.open_sync(own_state / "collector-hq.sqlite3")
        try:
            stored = store.read_sync()
        finally:
            store.close_sync()
        assert {(r.item.key, r.site) for r in stored} == {
            ("audit:e1", "site-a"),
            ("audit:e2", "site-a"),
            ("audit:e3", "site-a"),
        }

    async def test_an_edges_status_and_metrics_show_how_its_uploads_go(
        self, central: RouterThread, tmp_path: Path
    ) -> None:
        """The operator of a site whose key the collector refuses sees it in /status (the
        uploads refused, failures counted) and /metrics (failing), not only in one log line
        while the spool fills; a site whose key is good shows ok and its batches."""
        with (
            edge(tmp_path, central.url, "site-a", KEY_A) as good,
            edge(tmp_path, central.url, "site-b", WRONG) as refused,
        ):
            await put(good, "audit:u1")
            await put(refused, "audit:u2")
            await drained(good, 1)
            deadline = time.monotonic() + 15
            while True:
                uploads = orjson.loads(await admin_page(refused, "/status"))["spool"]["uploads"]
                if uploads["failures"]:
                    break
                assert time.monotonic() < deadline, uploads
                await asyncio.sleep(0.1)
            kept = orjson.loads(await admin_page(good, "/status"))["spool"]["uploads"]
            refused_metrics = (await admin_page(refused, "/metrics")).decode()
            good_metrics = (await admin_page(good, "/metrics")).decode()
        assert (uploads["state"], uploads["last_failure"]) == ("refused", "CollectorRefused")
        assert (uploads["batches"], uploads["last_batch_age_s"]) == (0, None)
        assert (kept["state"], kept["batches"], kept["delivered"]) == ("ok", 1, 1)
        assert kept["last_batch_age_s"] >= 0
        assert "layer_router_spool_upload_failing 1.0" in refused_metrics
        assert "layer_router_spool_upload_failing 0.0" in good_metrics
        assert "layer_router_spool_upload_batches_total 1.0" in good_metrics

    async def test_keys_never_show(
        self, central: RouterThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Good, wrong and mismatched keys in use on both sides: the refused edge's warning is
        logged, its records wait, and no key (nor its hash) is in any log line, /metrics or
        /status of either router."""
        caplog.set_level(logging.DEBUG)
        with (
            edge(tmp_path, central.url, "site-a", KEY_A) as good,
            edge(tmp_path, central.url, "site-b", WRONG) as refused,
            edge(tmp_path, central.url, "site-c", KEY_B) as impostor,  # site-b's key
        ):
            await put(good, "audit:g1")
            await put(refused, "audit:r1")
            await put(impostor, "audit:i1")
            await drained(good, 1)
            deadline = time.monotonic() + 15
            while caplog.text.count("refused this site's credentials") < 2:
                assert time.monotonic() < deadline, caplog.text
                await asyncio.sleep(0.1)
            for waiting in (refused, impostor):
                counts = await asyncio.to_thread(waiting.call_async, spool_of(waiting).counts)
                assert (counts.delivered, counts.pending) == (0, 1)
            pages = [await admin_pages(s) for s in (central, good, refused, impostor)]
        assert "(401)" in caplog.text
        assert "(403)" in caplog.text
        assert_no_canary(caplog.text, *pages)


async def test_a_bad_key_file_stops_start_up(tmp_path: Path) -> None:
    """A site whose key file cannot be used does not start (rather than upload unsigned), and
    the error names the file but not what it holds."""
    bad = tmp_path / "upload.key"
    bad.write_text("short-secret")
    settings = Settings.model_validate(
        {
            "models": {"repository": tmp_path},
            "spool": {"collector_url": "http://127.0.0.1:9", "collector_key_file": bad},
        }
    )
    server = TestServer(build_app(settings), host="127.0.0.1")
    with pytest.raises(ConfigError) as error:
        await server.start_server()
    await server.close()
    assert "spool.collector_key_file" in str(error.value)
    assert "short-secret" not in str(error.value)


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[trustme.CA, trustme.CA]:
    """A server CA whose leaf the central presents, and the CA its clients' certificates
    come from (written where the central's server.tls names them)."""
    server_ca, client_ca = trustme.CA(), trustme.CA()
    leaf = server_ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "site.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "site.key"))
    client_ca.cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    return server_ca, client_ca


@pytest.fixture
async def mtls_central(
    tmp_path: Path, certificates: tuple[trustme.CA, trustme.CA]
) -> AsyncIterator[str]:
    """The central with keys and a listener that requires client certificates; its URL."""
    tls = {
        "cert_file": tmp_path / "site.pem",
        "key_file": tmp_path / "site.key",
        "client_ca_file": tmp_path / "clients.pem",
    }
    settings = central_settings(tmp_path, tls=tls)
    assert settings.server.tls is not None
    server = TestServer(build_app(settings), host="127.0.0.1")
    await server.start_server(ssl=listener_context(settings.server.tls, "server.tls"))
    try:
        yield f"https://127.0.0.1:{server.port}"
    finally:
        await server.close()


async def test_a_verified_client_certificate_is_enough(
    mtls_central: str, certificates: tuple[trustme.CA, trustme.CA]
) -> None:
    """Over mTLS a site's batch needs no key; a key it does send must still be valid."""
    server_ca, client_ca = certificates
    context = ssl.create_default_context()
    server_ca.configure_trust(context)
    client_ca.issue_cert("site-c.example").configure_cert(context)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        url = mtls_central + COLLECTOR_PATH
        sent = headers(site="site-c")
        async with http.post(url, data=batch("audit:m1"), headers=sent, ssl=context) as answer:
            assert answer.status == 200
            assert (await answer.json())["new"] == 1
        sent = headers(WRONG, "site-c")
        async with http.post(url, data=batch("audit:m2"), headers=sent, ssl=context) as answer:
            assert answer.status == 401
        sent = headers(site="not a site id")
        async with http.post(url, data=batch("audit:m3"), headers=sent, ssl=context) as answer:
            assert answer.status == 400


@pytest.fixture
async def bound_central(
    tmp_path: Path, certificates: tuple[trustme.CA, trustme.CA]
) -> AsyncIterator[str]:
    """The mTLS central where site-a is bound to its key and to certificates naming
    site-a.example, site-b to its key only, and site-c to certificates naming site-c.example."""
    tls = {
        "cert_file": tmp_path / "site.pem",
        "key_file": tmp_path / "site.key",
        "client_ca_file": tmp_path / "clients.pem",
    }
    sites = {
        "site-a": {"keys": [hash_key(KEY_A)], "certificate_names": ["site-a.example"]},
        "site-b": hash_key(KEY_B),
        "site-c": {"certificate_names": ["site-c.example"]},
    }
    settings = central_settings(tmp_path, sites, tls=tls)
    assert settings.server.tls is not None
    server = TestServer(build_app(settings), host="127.0.0.1")
    await server.start_server(ssl=listener_context(settings.server.tls, "server.tls"))
    try:
        yield f"https://127.0.0.1:{server.port}"
    finally:
        await server.close()


async def test_a_certificate_bound_to_a_site_uploads_only_for_it(
    bound_central: str, certificates: tuple[trustme.CA, trustme.CA]
) -> None:
    """Over real mTLS: site-c's certificate uploads for site-c (named or not) but not as
    site-a or site-b, not even with site-b's valid key (403 site_mismatch); a valid
    certificate bound to no site cannot upload as site-a, even with site-a's key."""
    server_ca, client_ca = certificates

    def context(name: str) -> ssl.SSLContext:
        made = ssl.create_default_context()
        server_ca.configure_trust(made)
        client_ca.issue_cert(name).configure_cert(made)
        return made

    site_c, stranger = context("site-c.example"), context("stranger.example")
    url = bound_central + COLLECTOR_PATH
    tries = [
        (site_c, headers(site="site-c"), "audit:c1", 200),
        (site_c, headers(), "audit:c2", 200),
        (site_c, headers(site="site-a"), "audit:c3", 403),
        (site_c, headers(KEY_B, "site-b"), "audit:c4", 403),
        (stranger, headers(KEY_A, "site-a"), "audit:c5", 403),
        (stranger, headers(site="site-c"), "audit:c6", 403),
        (context("site-a.example"), headers(KEY_A, "site-a"), "audit:c7", 200),
    ]
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        for tls, sent, key, expected in tries:
            async with http.post(url, data=batch(key), headers=sent, ssl=tls) as answer:
                assert (key, answer.status) == (key, expected)
                if expected == 403:
                    assert (await answer.json())["error"]["code"] == "site_mismatch"


async def test_collector_sites_apply_on_sighup(tmp_path: Path) -> None:
    """A real central process: a site added to spool.collector_sites and SIGHUP, and its key
    uploads; the site removed and SIGHUP, and its key is 401 again; nothing needs a restart."""
    config = tmp_path / "central.yaml"

    def write(sites: dict[str, str]) -> None:
        doc = {"site": {"id": "hq", "tier": "central"}, "spool": {"collector_sites": sites}}
        config.write_text(orjson.dumps(doc).decode())  # JSON is YAML

    write({"site-a": hash_key(KEY_A)})
    args = [sys.executable, "-m", "router", "serve", "--port", "0", "--config", config]
    async with aiohttp.ClientSession() as http, spawn(*args, stderr=tmp_path / "err") as child:
        await wait_ready(http, child.url)
        status, _, _ = await post(child.url, batch("audit:r1"), headers(KEY_B, "site-b"))
        assert status == 401
        write({"site-a": hash_key(KEY_A), "site-b": hash_key(KEY_B)})
        child.process.send_signal(signal.SIGHUP)
        line = await child.read_until("reload")
        assert "reloaded" in line
        status, _, _ = await post(child.url, batch("audit:r1"), headers(KEY_B, "site-b"))
        assert status == 200
        write({"site-b": hash_key(KEY_B)})
        child.process.send_signal(signal.SIGHUP)
        await child.read_until("reloaded")
        status, _, _ = await post(child.url, batch("audit:r2"), headers(KEY_A, "site-a"))
        assert status == 401
        assert not any("restart" in out for out in child.stdout)
        child.process.send_signal(signal.SIGTERM)
        assert await child.exit_code() == 0


async def test_a_reload_that_would_leave_the_collector_unguarded_keeps_its_sites(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An exposed central whose new file drops every site for mTLS, which needs a restart:
    the running listener has no client CA, so the reload keeps the old sites (site-a's key
    still uploads, a stranger is still 401) and says so; the file's new retention applies."""
    running = central_settings(tmp_path, host="0.0.0.0", auth={"mode": "disabled"})
    tls = {"cert_file": tmp_path / "site.pem", "client_ca_file": tmp_path / "clients.pem"}
    doc = running.model_dump(mode="json")
    doc["server"]["tls"] = tls
    doc["spool"]["collector_sites"] = {}
    doc["spool"]["collector_retention_s"] = 1234.0
    new = Settings.model_validate(doc)  # valid by itself: mTLS guards it
    with RouterThread(running, read_settings=lambda: new) as central:
        assert central.app is not None
        central.call_async(central.app[RELOADER].reload, "test")
        # The retention does not depend on the guard that is kept: it applies.
        assert central.app[COLLECTOR_STORE].retention.max_age_s == 1234.0
        status, _, _ = await post(central.url, batch("audit:u1"), headers(KEY_A, "site-a"))
        assert status == 200
        status, _, _ = await post(central.url, batch("audit:u2"), headers(site="anyone"))
        assert status == 401
    assert "the sites are kept" in caplog.text


async def test_an_upload_key_in_tenants_yaml_is_no_api_key(tmp_path: Path) -> None:
    """A site's upload key that tenants.yaml also gives a tenant (an operator's slip): the
    API refuses it with 401 while the tenant's own key works, and the collector still takes
    it as the site's."""
    own = "lr-tenant-own-key-0123456789abcdefghij"
    bundle = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), bundle)
    (bundle / "tenants.yaml").write_text(
        f"tenants:\n  line-3: {{keys: ['{hash_key(KEY_A)}', '{hash_key(own)}']}}\n"
    )
    settings = central_settings(tmp_path, auth={"mode": "required"}).model_copy(
        update={"policy": PolicySettings(bundle=bundle)}
    )
    with RouterThread(settings) as server:
        async with aiohttp.ClientSession() as http:
            for key, expected in ((KEY_A, 401), (own, 200)):
                bearer = {"Authorization": f"Bearer {key}"}
                async with http.get(server.url + "/v1/models", headers=bearer) as response:
                    assert response.status == expected
        status, _, _ = await post(server.url, batch("audit:u1"), headers(KEY_A, "site-a"))
        assert status == 200
