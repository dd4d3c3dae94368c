"""Policy bundles distributed like OPA bundles: a central HTTP server publishes signed bundles
with ETags; sites poll it, activate good bundles, reject tampered ones and keep serving on the
last good one, which also lets a site start while the server is down."""

from __future__ import annotations

import hashlib
import re
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trustme
from aiohttp import web

from router.api.admin import status_document
from router.app import build_app
from router.errors import BundleRejected
from router.policy.archive import pack, read_folder
from router.policy.signing import SIGNATURES_FILE, generate_keypair, load_private_key, sign
from router.policy.source import HttpSource
from router.resources import default_policy_bundle
from router.settings import BundleSourceSettings, Settings
from router.testing import AppThread, RouterThread

POLL_S = 0.5
INFER = orjson.dumps(
    {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 1]}]}
)


class BundleServer:
    """The central tier's bundle endpoint: serves the published archive with a strong ETag and
    answers 304 to a matching If-None-Match; counts what it answered."""

    def __init__(self, etags: bool = True) -> None:
        self.etags = etags
        self.archive = b""
        self.lock = threading.Lock()
        self.answers: dict[int, int] = {200: 0, 304: 0}

    def publish(self, archive: bytes) -> None:
        with self.lock:
            self.archive = archive

    async def handle(self, request: web.Request) -> web.Response:
        with self.lock:
            archive = self.archive
        etag = '"' + hashlib.sha256(archive).hexdigest()[:32] + '"'
        if not self.etags:
            with self.lock:
                self.answers[200] += 1
            return web.Response(body=archive)
        status = 304 if request.headers.get("If-None-Match") == etag else 200
        with self.lock:
            self.answers[status] += 1
        body = archive if status == 200 else b""
        return web.Response(status=status, body=body, headers={"ETag": etag})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/bundles/site.tar.gz", self.handle)
        return app


def bundle(tmp_path: Path, revision: str, key: Path | None, tamper: bool = False) -> bytes:
    folder = tmp_path / f"bundle-{revision}"
    shutil.copytree(default_policy_bundle(), folder, dirs_exist_ok=True)
    manifest = (folder / "manifest.yaml").read_text().replace("2026-11-27.1", revision)
    (folder / "manifest.yaml").write_text(manifest)
    files = read_folder(folder)
    if key is not None:
        files[SIGNATURES_FILE] = sign(files, load_private_key(key))
    if tamper:
        files["tenants.yaml"] += b"\n# changed after signing\n"
    return pack(files)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "central")


@pytest.fixture
def central() -> Iterator[tuple[BundleServer, AppThread]]:
    server = BundleServer()
    with AppThread(server.app) as thread:
        yield server, thread


def site_settings(site: str, url: str, public: Path, edge_models: Path) -> Settings:
    return Settings.model_validate(
        {
            "site": {"id": site},
            "models": {"repository": edge_models, "inference_threads": 1},
            "cache": {"enabled": False},
            "policy": {
                "source": {"url": url, "poll_interval_s": POLL_S, "timeout_s": 2.0},
                "public_keys": [public],
            },
        }
    )


def bundle_status(site: AppThread) -> dict[str, Any]:
    """The site's bundle state, as the admin listener's /status shows it under `policy`."""
    assert site.app is not None
    doc: dict[str, Any] = site.call_async(status_document, site.app)["policy"]
    return doc


def wait_for(check: Callable[[], bool], timeout_s: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - started


def test_three_sites_follow_the_central_bundle(
    tmp_path: Path,
    keys: tuple[Path, Path],
    central: tuple[BundleServer, AppThread],
    edge_models: Path,
) -> None:
    """Three sites pick up a signed bundle within one poll interval, reject a tampered one and
    keep serving on the last good one, all reporting the same revision."""
    server, thread = central
    url = thread.url + "/bundles/site.tar.gz"
    server.publish(bundle(tmp_path, "r1", keys[0]))
    sites = [
        RouterThread(site_settings(f"site-{n}", url, keys[1], edge_models), admin=True)
        for n in range(3)
    ]
    for site in sites:
        site.start()
    try:
        for site in sites:
            wait_for(lambda s=site: bundle_status(s)["revision"] == "r1", 10)
            assert httpx.get(site.url + "/v2/health/ready", timeout=10).status_code == 200

        published = time.time()
        server.publish(bundle(tmp_path, "r2", keys[0]))
        wait_for(lambda: all(bundle_status(s)["revision"] == "r2" for s in sites), 5)
        for site in sites:
            # Within one poll interval (plus the fetch, verification and swap themselves).
            assert bundle_status(site)["last_activation"] - published <= POLL_S + 0.25
        downloads = server.answers[200]
        wait_for(lambda: all(bundle_status(s)["not_modified"] >= 2 for s in sites), 5)
        assert server.answers[304] >= 6
        assert server.answers[200] == downloads  # unchanged polls cost no download

        server.publish(bundle(tmp_path, "r3", keys[0], tamper=True))
        wait_for(lambda: all(bundle_status(s)["rejections"] >= 1 for s in sites), 5)
        for site in sites:
            status = bundle_status(site)
            assert status["revision"] == "r2"
            assert "does not match its signed digest" in status["last_error"]
            answer = httpx.post(
                site.url + "/v2/models/color_classifier/infer", content=INFER, timeout=10
            )
            assert answer.status_code == 200
            assert answer.headers["X-Policy-Revision"] == "r2"
        # What an operator sees on each site's admin listener: the same revision, the rejection.
        for site in sites:
            policy = httpx.get(site.admin_url + "/status", timeout=10).json()["policy"]
            assert (policy["revision"], policy["ready"]) == ("r2", True)
            assert "does not match its signed digest" in policy["last_error"]
            metrics = httpx.get(site.admin_url + "/metrics", timeout=10).text
            rejections = re.search(
                r"^layer_router_policy_bundle_rejections_total (\S+)$", metrics, re.M
            )
            assert rejections is not None
            assert float(rejections.group(1)) >= 1
    finally:
        for site in sites:
            site.stop()


def test_a_site_starts_on_its_last_good_bundle_while_the_server_is_down(
    tmp_path: Path, keys: tuple[Path, Path], edge_models: Path
) -> None:
    """The last good bundle is kept on disk: a restart without the server serves it at once."""
    server = BundleServer()
    server.publish(bundle(tmp_path, "kept-1", keys[0]))
    with AppThread(server.app) as thread:
        url = thread.url + "/bundles/site.tar.gz"
        settings = site_settings("offline-start", url, keys[1], edge_models)
        with RouterThread(settings) as site:
            wait_for(lambda: bundle_status(site)["revision"] == "kept-1", 10)
    with RouterThread(settings) as site:  # the server is gone now
        status = bundle_status(site)
        assert status["revision"] == "kept-1"
        assert status["from_last_good"] is True
        assert httpx.get(site.url + "/v2/health/ready", timeout=10).status_code == 200
        wait_for(lambda: bundle_status(site)["last_error"] is not None, 10)
        assert "unreachable" in bundle_status(site)["last_error"]


def test_a_site_without_any_good_bundle_is_not_ready(
    tmp_path: Path,
    keys: tuple[Path, Path],
    central: tuple[BundleServer, AppThread],
    edge_models: Path,
) -> None:
    """Only unsigned bundles on offer: readiness stays 503 and requests get policy_pending."""
    server, thread = central
    server.publish(bundle(tmp_path, "unsigned", None))
    url = thread.url + "/bundles/site.tar.gz"
    with RouterThread(site_settings("never-ready", url, keys[1], edge_models)) as site:
        wait_for(lambda: bundle_status(site)["rejections"] >= 1, 10)
        assert "not signed" in bundle_status(site)["last_error"]
        assert httpx.get(site.url + "/v2/health/ready", timeout=10).status_code == 503
        assert httpx.get(site.url + "/v2", timeout=10).json()["policy_revision"] is None
        answer = httpx.post(
            site.url + "/v2/models/color_classifier/infer", content=INFER, timeout=10
        )
        assert answer.status_code == 503
        assert answer.headers["Retry-After"]
        assert "no verified policy bundle" in answer.json()["error"]


def test_a_local_archive_source_is_polled(
    tmp_path: Path, keys: tuple[Path, Path], edge_models: Path
) -> None:
    """A path source is re-read every poll: a new signed archive is activated, an unchanged
    one counts as not modified, an unsigned one is rejected and the old revision stays."""
    archive = tmp_path / "site.tar.gz"
    archive.write_bytes(bundle(tmp_path, "p1", keys[0]))
    settings = Settings.model_validate(
        {
            "site": {"id": "path-site"},
            "models": {"repository": edge_models, "inference_threads": 1},
            "policy": {
                "source": {"path": archive, "poll_interval_s": 0.2},
                "public_keys": [keys[1]],
            },
        }
    )
    with RouterThread(settings) as site:
        assert bundle_status(site)["revision"] == "p1"
        wait_for(lambda: bundle_status(site)["not_modified"] >= 1, 5)
        archive.write_bytes(bundle(tmp_path, "p2", keys[0]))
        wait_for(lambda: bundle_status(site)["revision"] == "p2", 5)
        archive.write_bytes(bundle(tmp_path, "p3", None))
        wait_for(lambda: bundle_status(site)["rejections"] >= 1, 5)
        assert bundle_status(site)["revision"] == "p2"


def test_an_unsigned_local_bundle_does_not_start_when_keys_are_configured(
    tmp_path: Path, keys: tuple[Path, Path], edge_models: Path
) -> None:
    """With public keys configured, even a local bundle folder must be signed."""
    settings = Settings.model_validate(
        {
            "models": {"repository": edge_models},
            "policy": {"bundle": default_policy_bundle(), "public_keys": [keys[1]]},
        }
    )
    with pytest.raises(BundleRejected, match="not signed"):
        build_app(settings)


def test_a_server_without_etags_causes_no_needless_swaps(
    tmp_path: Path, keys: tuple[Path, Path], edge_models: Path
) -> None:
    """The same bundle downloaded again (no ETag to send back) is recognised as unchanged."""
    server = BundleServer(etags=False)
    server.publish(bundle(tmp_path, "same", keys[0]))
    with AppThread(server.app) as thread:
        url = thread.url + "/bundles/site.tar.gz"
        with RouterThread(site_settings("no-etags", url, keys[1], edge_models)) as site:
            wait_for(lambda: bundle_status(site)["not_modified"] >= 3, 10)
            status = bundle_status(site)
            assert status["activations"] == 1
            assert status["reload"]["generation"] == 2  # the pending one, then "same" only
            assert server.answers[200] >= 4


async def test_an_https_source_with_a_private_ca(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """A bundle server behind a private CA is trusted through `source.tls.ca_file`, and
    refused as unreachable without it."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server = BundleServer()
    server.publish(bundle(tmp_path, "tls-1", keys[0]))
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/bundles/site.tar.gz"
    try:
        for tls, revision in (({}, None), ({"ca_file": ca_file}, "tls-1")):
            source = HttpSource(BundleSourceSettings(url=url, tls=tls))
            try:
                if revision is None:
                    with pytest.raises(BundleRejected, match="unreachable"):
                        await source.fetch(None)
                else:
                    fetched = await source.fetch(None)
                    assert fetched is not None
                    assert b"tls-1" in fetched.files["manifest.yaml"]
            finally:
                await source.close()
    finally:
        await runner.cleanup()
