"""mTLS to upstreams (TESTING.md S12): an upstream over TLS on loopback with an unknown CA, a
wrong name, an expired certificate, or demanding a client certificate the router lacks gets
no request at all, and the client sees a clear 502 `upstream_tls_failed` (`upstream_reset`
for the missing client certificate, which TLS 1.3 reports as a reset); with the right CA,
client certificate and server name the request goes through."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from router.api.errors import error_middleware
from router.api.state import TLS
from router.app import build_app
from router.settings import Settings
from router.spool.collector import CollectorStore, collector_routes
from router.testing import FakeUpstream
from router.upstreams.tls import reload_contexts

EDGE_MODELS = Path(__file__).resolve().parents[2] / "edge_models"
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
INFER = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, 0]}]}
NAME = "upstream.example"  # the name the upstream's certificate carries


@dataclass
class Pki:
    """A server CA, a client CA, and their PEM files in a folder."""

    folder: Path
    server_ca: trustme.CA = field(default_factory=trustme.CA)
    client_ca: trustme.CA = field(default_factory=trustme.CA)

    def file(self, name: str, blob: trustme.Blob) -> Path:
        path = self.folder / name
        blob.write_to_path(str(path))
        return path

    def server_context(self, cert: trustme.LeafCert, require_client_cert: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        if require_client_cert:
            self.client_ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@dataclass
class TlsUpstream:
    fake: FakeUpstream
    server: TestServer
    hits: list[str]  # every request the upstream's HTTP layer saw, health checks included

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"


Start = Callable[[ssl.SSLContext], Awaitable[TlsUpstream]]


@pytest.fixture
async def tls_upstream() -> AsyncIterator[Start]:
    servers: list[TestServer] = []

    async def start(context: ssl.SSLContext) -> TlsUpstream:
        fake = FakeUpstream(name="regional", models=["gpt-test"])
        hits: list[str] = []
        app = fake.app()

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            hits.append(request.path)
            return await handler(request)  # type: ignore[no-any-return]

        app.middlewares.append(record)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(ssl=context)
        servers.append(server)
        return TlsUpstream(fake, server, hits)

    yield start
    for server in servers:
        await server.close()


def edge_settings(url: str, tls: dict[str, Any]) -> Settings:
    return Settings.model_validate(
        {
            "models": {"repository": EDGE_MODELS, "inference_threads": 1},
            "cache": {"enabled": False},
            "upstreams": [
                {
                    "name": "regional",
                    "tier": "regional",
                    "models": ["gpt-test"],
                    "endpoints": [{"url": url}],
                    "tls": tls,
                    "retry": {"base_backoff_ms": 1, "max_backoff_ms": 2},
                    "health_check": {"interval_s": 0.2, "timeout_s": 0.5},
                }
            ],
        }
    )


async def chat(router: TestServer) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        url = router.make_url("/v1/chat/completions")
        async with http.post(url, json=CHAT, timeout=aiohttp.ClientTimeout(10)) as resp:
            return resp.status, await resp.json()


async def chat_through(settings: Settings) -> tuple[int, dict[str, Any]]:
    router = TestServer(build_app(settings), host="127.0.0.1")
    await router.start_server()
    try:
        return await chat(router)
    finally:
        await router.close()


def client_files(pki: Pki, ca: trustme.CA | None = None) -> dict[str, Any]:
    """The router's side: trust `ca` (the server CA by default), present a client cert."""
    client = pki.client_ca.issue_cert("edge-site")
    return {
        "ca_file": pki.file("ca.pem", (ca or pki.server_ca).cert_pem),
        "cert_file": pki.file("client.pem", client.cert_chain_pems[0]),
        "key_file": pki.file("client.key", client.private_key_pem),
        "server_name": NAME,
    }


class TestUpstreamTls:
    async def test_mutual_tls_with_server_name_forwards(
        self, pki: Pki, tls_upstream: Start
    ) -> None:
        """Right CA, client certificate and server name (the URL says 127.0.0.1): forwarded."""
        upstream = await tls_upstream(pki.server_context(pki.server_ca.issue_cert(NAME), True))
        status, body = await chat_through(edge_settings(upstream.url, client_files(pki)))
        assert status == 200, body
        assert len(upstream.fake.requests_to("/v1/chat/completions")) == 1

    @pytest.mark.parametrize(
        "problem", ["unknown_ca", "wrong_name", "expired", "no_client_cert", "name_not_set"]
    )
    async def test_refused_handshake_forwards_nothing(
        self, pki: Pki, tls_upstream: Start, problem: str
    ) -> None:
        """Each bad handshake: 0 requests reach the upstream, the client gets 502
        upstream_tls_failed."""
        cert = pki.server_ca.issue_cert(NAME)
        tls = client_files(pki)
        if problem == "unknown_ca":
            tls = client_files(pki, ca=trustme.CA())
        elif problem == "wrong_name":
            cert = pki.server_ca.issue_cert("other.example")
        elif problem == "expired":
            now = dt.datetime.now(dt.UTC)
            cert = pki.server_ca.issue_cert(
                NAME, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
            )
        elif problem == "no_client_cert":
            tls = {"ca_file": tls["ca_file"], "server_name": NAME}
        elif problem == "name_not_set":
            tls.pop("server_name")  # the certificate names NAME, the URL 127.0.0.1
        upstream = await tls_upstream(pki.server_context(cert, require_client_cert=True))
        status, body = await chat_through(edge_settings(upstream.url, tls))
        # TLS 1.3: the server refuses a missing client certificate after the client finished
        # its handshake, often as a bare reset the client cannot tell from any other.
        codes = (
            {"upstream_tls_failed", "upstream_reset"}
            if problem == "no_client_cert"
            else {"upstream_tls_failed"}
        )
        assert (status, body["error"]["code"] in codes) == (502, True), body
        assert upstream.hits == []
        assert upstream.fake.received == []


async def test_refused_handshakes_are_logged_once_and_mark_the_cluster_down(
    pki: Pki, tls_upstream: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """An unknown CA: the health checks, refused as requests are, mark the endpoint down, so
    clients soon get 503 offline; the operator gets one error line naming the cluster and
    upstreams[].tls, however many handshakes fail (as the README says)."""
    upstream = await tls_upstream(pki.server_context(pki.server_ca.issue_cert(NAME), False))
    settings = edge_settings(upstream.url, client_files(pki, ca=trustme.CA()))
    router = TestServer(build_app(settings), host="127.0.0.1")
    await router.start_server()
    try:
        await asyncio.sleep(1.0)  # five health checks
        status, body = await chat(router)
        assert (status, body["error"]["code"]) == (503, "offline"), body
    finally:
        await router.close()
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    refused = [line for line in lines if "TLS handshake refused" in line]
    assert len(refused) == 1, lines
    assert "cluster regional" in refused[0]
    assert "upstreams[].tls" in refused[0]
    assert upstream.hits == []


async def test_rotated_ca_file_is_used_after_reload(pki: Pki, tls_upstream: Start) -> None:
    """The upstream moves to a new CA: refused until the router's ca_file holds the new CA
    and the reload hook ran, then forwarded, without a restart."""
    new_ca = trustme.CA()
    upstream = await tls_upstream(pki.server_context(new_ca.issue_cert(NAME), True))
    settings = edge_settings(upstream.url, client_files(pki))  # trusts the old CA
    router = TestServer(build_app(settings), host="127.0.0.1")
    await router.start_server()
    try:
        assert (await chat(router))[0] == 502
        ca_file = settings.upstreams[0].tls.ca_file
        assert ca_file is not None
        pki.file(ca_file.name, new_ca.cert_pem)
        assert await reload_contexts(router.app[TLS]) == []  # type: ignore[index]
        # The failed handshakes may have failed health checks too: give them time to pass.
        async with asyncio.timeout(10):
            while True:
                if (await chat(router))[0] == 200:
                    break
                await asyncio.sleep(0.1)
    finally:
        await router.close()
    assert len(upstream.fake.requests_to("/v1/chat/completions")) == 1


async def test_spool_uploads_to_an_mtls_collector(pki: Pki, tmp_path: Path) -> None:
    """`spool.tls` gives the drainer the CA, client certificate and server name for an https
    collector that requires client certificates: the audit copy of a request arrives."""
    store = await CollectorStore.open(tmp_path / "collector.sqlite3")
    central = web.Application(middlewares=[error_middleware])
    central.add_routes(collector_routes(store))
    collector = TestServer(central, host="127.0.0.1")
    await collector.start_server(ssl=pki.server_context(pki.server_ca.issue_cert(NAME), True))
    settings = Settings.model_validate(
        {
            "models": {"repository": EDGE_MODELS, "inference_threads": 1},
            "audit": {"path": tmp_path / "audit"},
            "spool": {
                "path": tmp_path / "spool.sqlite3",
                "collector_url": f"https://127.0.0.1:{collector.port}",
                "tls": client_files(pki),
            },
        }
    )
    router = TestServer(build_app(settings), host="127.0.0.1")
    await router.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            url = router.make_url("/v2/models/color_classifier/infer")
            async with http.post(url, json=INFER) as response:
                assert response.status == 200
                audit_id = response.headers["X-Audit-Id"]
        async with asyncio.timeout(15):
            while True:
                keys = {r.item.key for r in await store.read()}
                if f"audit:{audit_id}" in keys:
                    break
                await asyncio.sleep(0.1)
    finally:
        await router.close()
        await collector.close()
        await store.close()
