"""TLS on the listener (`server.tls`), in a real `layer-router serve` process: a client that
trusts the site's CA and presents a certificate is served over HTTPS; one without a client
certificate is refused when `client_ca_file` is set; plain HTTP gets nothing."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

import router
from router.testing import serving

ROUTER_ROOT = Path(router.__file__).resolve().parents[1]
URL = re.compile(r"listening on (https://[^\s,]+)")
TIMEOUT = aiohttp.ClientTimeout(total=10)


@asynccontextmanager
async def serve(config: Path, log: Path) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROUTER_ROOT), env.get("PYTHONPATH")]))
    with log.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router", "serve", "--config", str(config), "--port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=err, env=env,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            async with asyncio.timeout(60):
                while not (match := URL.search((await process.stdout.readline()).decode())):
                    assert process.returncode is None, f"serve exited; see {log}"
            yield match.group(1), process
        finally:
            if process.returncode is None:
                process.terminate()
                await process.wait()


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, trustme.CA, trustme.CA]:
    """A config whose listener has a certificate from `server_ca` and trusts `client_ca`."""
    server_ca, client_ca = trustme.CA(), trustme.CA()
    leaf = server_ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "site.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "site.key"))
    client_ca.cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    config = tmp_path / "site.yaml"
    config.write_text(
        "server:\n  readiness_grace_s: 0\n"
        "  tls: {cert_file: site.pem, key_file: site.key, client_ca_file: clients.pem}\n"
    )
    return config, server_ca, client_ca


async def get_live(url: str, context: ssl.SSLContext | bool) -> int:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.get(f"{url}/v2/health/live", ssl=context) as response,
    ):
        return response.status


async def test_listener_requires_client_certificates(
    site: tuple[Path, trustme.CA, trustme.CA], tmp_path: Path
) -> None:
    """With the client CA set: served over HTTPS with a client certificate, refused without
    one, and plain HTTP on the port never gets an answer."""
    config, server_ca, client_ca = site
    with_cert = ssl.create_default_context()
    server_ca.configure_trust(with_cert)
    client_ca.issue_cert("operator").configure_cert(with_cert)
    without_cert = ssl.create_default_context()
    server_ca.configure_trust(without_cert)
    async with serve(config, tmp_path / "stderr.log") as (url, _):
        assert await get_live(url, with_cert) == 200
        with pytest.raises(aiohttp.ClientError):
            await get_live(url, without_cert)
        with pytest.raises(aiohttp.ClientError):
            await get_live(url.replace("https://", "http://"), False)


async def test_sighup_rotates_the_listener_certificate(
    site: tuple[Path, trustme.CA, trustme.CA], tmp_path: Path
) -> None:
    """New certificate files from another CA + SIGHUP: new connections are served with the
    new certificate (clients trusting only the new CA get in, those trusting the old do not)."""
    config, server_ca, client_ca = site
    renewed_ca = trustme.CA()

    def client(ca: trustme.CA) -> ssl.SSLContext:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        client_ca.issue_cert("operator").configure_cert(context)
        return context

    async with serve(config, tmp_path / "stderr.log") as (url, process):
        assert await get_live(url, client(server_ca)) == 200
        leaf = renewed_ca.issue_cert("127.0.0.1")
        leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "site.pem"))
        leaf.private_key_pem.write_to_path(str(tmp_path / "site.key"))
        process.send_signal(signal.SIGHUP)
        async with asyncio.timeout(10):
            while True:
                try:
                    if await get_live(url, client(renewed_ca)) == 200:
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        with pytest.raises(aiohttp.ClientError):
            await get_live(url, client(server_ca))
        assert process.returncode is None


async def test_connections_past_the_cap_get_503_over_tls(
    site: tuple[Path, trustme.CA, trustme.CA], tmp_path: Path
) -> None:
    """max_connections 1 on an HTTPS listener: a second client reads 503 + Retry-After, and
    the refusal logs no transport error (TLS has no half-close to refuse with)."""
    config, server_ca, client_ca = site
    config.write_text(config.read_text() + "limits: {max_connections: 1}\n")
    context = ssl.create_default_context()
    server_ca.configure_trust(context)
    client_ca.issue_cert("operator").configure_cert(context)
    log = tmp_path / "stderr.log"
    async with serve(config, log) as (url, _):
        host, port = url.removeprefix("https://").rsplit(":", 1)
        _, held = await asyncio.open_connection(host, int(port), ssl=context)
        try:
            await asyncio.sleep(0.2)  # the router has counted the held connection
            async with (
                aiohttp.ClientSession(timeout=TIMEOUT) as http,
                http.get(f"{url}/v2/health/live", ssl=context) as refused,
            ):
                assert refused.status == 503
                assert refused.headers["Retry-After"] == "1"
        finally:
            held.close()
    assert "NotImplementedError" not in log.read_text()
    assert "Fatal error" not in log.read_text()


async def test_a_silent_tls_client_is_closed_on_the_head_deadline(
    site: tuple[Path, trustme.CA, trustme.CA], tmp_path: Path
) -> None:
    """A client that connects to the HTTPS port and never starts its handshake is closed by
    limits.header_timeout_s (0.5 s here), not held for asyncio's default 60 s."""
    config, _, _ = site
    config.write_text(config.read_text() + "limits: {header_timeout_s: 0.5}\n")
    async with serve(config, tmp_path / "stderr.log") as (url, _):
        host, port = url.removeprefix("https://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            async with asyncio.timeout(5):
                assert await reader.read() == b""  # closed by the router
        finally:
            writer.close()


async def test_a_client_that_stops_reading_frees_its_place_on_the_head_deadline(
    site: tuple[Path, trustme.CA, trustme.CA], tmp_path: Path
) -> None:
    """max_connections 1: a TLS client that finishes its handshake, then neither sends nor
    reads, is closed at header_timeout_s and its place is free soon after, not held the 30 s
    asyncio waits by default for a close_notify the client never sends back."""
    config, server_ca, client_ca = site
    config.write_text(config.read_text() + "limits: {max_connections: 1, header_timeout_s: 0.5}\n")
    context = ssl.create_default_context()
    server_ca.configure_trust(context)
    client_ca.issue_cert("operator").configure_cert(context)
    async with serve(config, tmp_path / "stderr.log") as (url, _):
        host, port = url.removeprefix("https://").rsplit(":", 1)

        def connect() -> ssl.SSLSocket:  # a blocking socket: nothing reads it in the background
            raw = socket.create_connection((host, int(port)), timeout=5)
            return context.wrap_socket(raw, server_hostname=host)

        silent = await asyncio.to_thread(connect)
        try:
            statuses = []
            for _ in range(20):  # within 5 s: the deadline (0.5 s), then the closing handshake's
                await asyncio.sleep(0.25)
                statuses.append(await get_live(url, context))
                if statuses[-1] == 200:
                    break
            assert statuses[-1] == 200, statuses
        finally:
            silent.close()


LARGE = 6 * 1024 * 1024  # more than the socket buffers of a slow reader hold


async def test_a_slow_reader_gets_the_whole_answer_after_a_tls_close(
    site: tuple[Path, trustme.CA, trustme.CA], tmp_path: Path
) -> None:
    """A TLS client reading a large relayed answer (Connection: close) steadily but slowly gets
    all of it: the closing handshake's deadline (the head deadline, 0.2 s here) is for clients
    that stopped reading, not for the answer's last bytes still on their way."""
    config, server_ca, client_ca = site

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"x" * LARGE, content_type="application/json")

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", answer)
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(serving(upstream))
        config.write_text(
            config.read_text() + "limits: {header_timeout_s: 0.2}\nupstreams:\n"
            "  - {name: central, tier: central, protocols: [openai], models: [m],"
            f" endpoints: [{{url: '{url}'}}], health_check: {{enabled: false}},"
            " max_response_bytes: 67108864}\n"
        )
        context = ssl.create_default_context()
        server_ca.configure_trust(context)
        client_ca.issue_cert("operator").configure_cert(context)
        site_url, _ = await stack.enter_async_context(serve(config, tmp_path / "stderr.log"))
        host, port = site_url.removeprefix("https://").rsplit(":", 1)
        chat = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'

        def read_slowly() -> bytes:
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            raw.settimeout(30)
            raw.connect((host, int(port)))
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(chat), chat)
                )
                got = bytearray()
                while piece := tls.recv(16384):
                    got += piece
                    time.sleep(0.01)
                return bytes(got)

        got = await asyncio.to_thread(read_slowly)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert len(body) == LARGE
