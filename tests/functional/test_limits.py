"""Request limits on a real router (TESTING.md S7, with R3's shedding and the connection cap):
bodies over the cap, oversized or too many headers, JSON nested deeper than 64 levels and a gzip
bomb are refused (413/431/400) before the whole body is read, with memory growth bounded by a
small multiple of what was sent."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import socket
import sys
import threading
import time
import tomllib
import zlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import brotli
import orjson
import pytest
from test_serve_process import spawn

from router.nesting import MAX_DEPTH
from router.settings import Settings
from router.testing import (
    AppThread,
    Behaviour,
    FakeUpstream,
    RouterThread,
    chat_forwarding_settings,
)

ROOT = Path(__file__).resolve().parents[2]
EDGE_MODELS = ROOT / "edge_models"
CLASSIFY = "/v2/models/color_classifier/infer"
CHAT = "/v1/chat/completions"
CAP = 1024 * 1024
TIMEOUT_S = 15.0
RGB = orjson.dumps(
    {"inputs": [{"name": "rgb", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.2, 0.3]}]}
)


def head(path: str, *headers: str) -> bytes:
    """A request head; the connection closes after the answer unless `headers` say otherwise."""
    if not any(h.lower().startswith("connection:") for h in headers):
        headers = (*headers, "Connection: close")
    lines = [f"POST {path} HTTP/1.1", "Host: router", "Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.") else -1


def answer(sock: socket.socket) -> bytes:
    """Everything until the router closes the connection (a client timeout fails the test)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def exchange(port: int, wire: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(wire)
        return answer(sock)


def rss_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(x for x in status if x.startswith(field + ":"))
    return int(line.split()[1])


@contextlib.contextmanager
def peak_growth() -> Iterator[list[int]]:
    """Bytes the process's peak RSS grew by inside the block (router and test share it)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")  # resets VmHWM to the current RSS
    base = rss_kib("VmRSS")
    grown: list[int] = []
    yield grown
    grown.append((rss_kib("VmHWM") - base) * 1024)


def bomb(members: int) -> bytes:
    """`members` gzip members of 64 MiB of zeros each (about 64 KiB compressed apiece)."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    member = squeeze.compress(bytes(64 * 1024 * 1024)) + squeeze.flush()
    return member * members


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    settings = Settings.model_validate(
        {
            "models": {"repository": str(EDGE_MODELS), "inference_threads": 1},
            "server": {"max_body_bytes": CAP},
            "cache": {"enabled": False},
        }
    )
    with RouterThread(settings) as server:
        warm = head(CLASSIFY, f"Content-Length: {len(RGB)}", "Connection: close") + RGB
        assert status_of(exchange(server.port, warm)) == 200
        yield server


class TestBody:
    def test_declared_length_over_the_cap_is_413_without_waiting_for_the_body(
        self, router: RouterThread
    ) -> None:
        """A 100 MiB Content-Length with one byte sent: 413 at once, connection closed."""
        reply = exchange(router.port, head(CLASSIFY, "Content-Length: 104857600") + b"{")
        assert status_of(reply) == 413
        assert b"exceeds the limit" in reply

    def test_chunked_body_over_the_cap_is_413_before_it_ends(self, router: RouterThread) -> None:
        """1.5 MiB of chunks and no last chunk: the router answers 413 without the end, and
        the peak memory grows by less than 10x what was sent."""
        piece = b"%x\r\n%s\r\n" % (64 * 1024, b"7" * 64 * 1024)
        wire = head(CLASSIFY, "Transfer-Encoding: chunked") + piece * 24
        with peak_growth() as grown:
            reply = exchange(router.port, wire)
        assert status_of(reply) == 413
        assert grown[0] <= 10 * len(wire)

    def test_honest_gzip_body_is_served(self, router: RouterThread) -> None:
        """The KServe face accepts a gzip-encoded request body."""
        payload = gzip.compress(RGB)
        wire = head(
            CLASSIFY,
            "Content-Encoding: gzip",
            f"Content-Length: {len(payload)}",
            "Connection: close",
        )
        assert status_of(exchange(router.port, wire + payload)) == 200

    @pytest.mark.parametrize("path", [CLASSIFY, CHAT])
    @pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
    def test_undecodable_compressed_body_is_400(
        self, router: RouterThread, path: str, encoding: str
    ) -> None:
        """A body that its Content-Encoding cannot decode is the client's error (400 with a
        clear message), not a 500 with a stack trace in the log."""
        wire = head(path, f"Content-Encoding: {encoding}", f"Content-Length: {len(RGB)}")
        reply = exchange(router.port, wire + RGB)
        assert status_of(reply) == 400
        assert b"Content-Encoding" in reply


class TestBrotli:
    """`Content-Encoding: br`, which the README lists beside gzip and deflate."""

    def test_brotli_comes_with_the_router(self) -> None:
        """aiohttp decodes br bodies only when brotli is installed: a runtime dependency (the
        dev venv had it only through locust, so a plain `pip install .` answered 400)."""
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        assert any(re.match(r"brotli\b", dep, re.I) for dep in project["dependencies"])

    def test_honest_br_body_is_served(self, router: RouterThread) -> None:
        """The KServe face accepts a brotli-encoded request body."""
        payload = brotli.compress(RGB)
        wire = head(
            CLASSIFY,
            "Content-Encoding: br",
            f"Content-Length: {len(payload)}",
            "Connection: close",
        )
        assert status_of(exchange(router.port, wire + payload)) == 200

    def test_br_bomb_is_413_and_costs_little_memory(self) -> None:
        """A few KiB of brotli inflating to 1 GiB: 413 naming the inflation limit, and the router
        never holds more than a few MiB of it."""
        squeeze, zeros = brotli.Compressor(quality=1), bytes(1 << 20)
        payload = b"".join(squeeze.process(zeros) for _ in range(1024)) + squeeze.finish()
        wire = head(CLASSIFY, "Content-Encoding: br", f"Content-Length: {len(payload)}")
        settings = Settings.model_validate({"models": {"repository": str(EDGE_MODELS)}})
        with RouterThread(settings) as router:
            warm = head(CLASSIFY, f"Content-Length: {len(RGB)}", "Connection: close") + RGB
            assert status_of(exchange(router.port, warm)) == 200
            with peak_growth() as grown:
                reply = exchange(router.port, wire + payload)
        assert status_of(reply) == 413
        assert b"inflates more than" in reply
        assert grown[0] <= 64 << 20


def test_gzip_bomb_is_413_and_costs_little_memory() -> None:
    """1 MiB of gzip inflating to 1 GiB on the KServe face, under the default body cap: 413
    naming the inflation limit; peak memory grows by at most 10x the bytes sent."""
    payload = bomb(16)
    wire = head(CLASSIFY, "Content-Encoding: gzip", f"Content-Length: {len(payload)}") + payload
    settings = Settings.model_validate({"models": {"repository": str(EDGE_MODELS)}})
    with RouterThread(settings) as router:
        warm = head(CLASSIFY, f"Content-Length: {len(RGB)}", "Connection: close") + RGB
        assert status_of(exchange(router.port, warm)) == 200
        with peak_growth() as grown:
            reply = exchange(router.port, wire)
    assert status_of(reply) == 413
    assert b"inflates more than" in reply
    assert grown[0] <= 10 * len(wire)


class TestHeaders:
    def test_a_header_over_8_kib_is_431(self, router: RouterThread) -> None:
        """One 9 KiB header value: 431, and the answer does not quote it."""
        reply = exchange(
            router.port, head(CLASSIFY, "X-Big: " + "q" * 9000, "Content-Length: 2") + b"{}"
        )
        assert status_of(reply) == 431
        assert b"qqqq" not in reply

    def test_a_request_target_over_8_kib_is_414(self, router: RouterThread) -> None:
        """A 9 KiB query string: 414 URI Too Long (RFC 9110), not 431, and it is not quoted."""
        reply = exchange(router.port, head(CLASSIFY + "?q=" + "u" * 9000, "Content-Length: 2"))
        assert status_of(reply) == 414
        assert b"uuuu" not in reply

    def test_more_than_100_headers_is_431(self, router: RouterThread) -> None:
        """101 header fields: 431; 90 are fine (the request reaches the model)."""
        many = [f"X-H{i}: v" for i in range(101)]
        assert (
            status_of(exchange(router.port, head(CLASSIFY, *many, "Content-Length: 2") + b"{}"))
            == 431
        )
        some = [f"X-H{i}: v" for i in range(90)]
        wire = head(CLASSIFY, *some, f"Content-Length: {len(RGB)}", "Connection: close") + RGB
        assert status_of(exchange(router.port, wire)) == 200


class TestJsonDepth:
    @pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 200, 5000])
    @pytest.mark.parametrize("path", [CLASSIFY, CHAT])
    def test_nesting_past_64_is_400_saying_so(
        self, router: RouterThread, path: str, depth: int
    ) -> None:
        """Deeper than 64 levels, even past orjson's own 1024: 400 with a clear message."""
        nested = b"[" * depth + b"]" * depth
        body = b'{"model":"gpt-test","inputs":' + nested + b"}"
        reply = exchange(router.port, head(path, f"Content-Length: {len(body)}") + body)
        assert status_of(reply) == 400
        assert b"deeper than 64 levels" in reply

    def test_nesting_of_64_is_not_refused_for_depth(self, router: RouterThread) -> None:
        """Exactly 64 levels passes the depth check (the tensor itself is then invalid)."""
        nested = b"[" * (MAX_DEPTH - 3) + b"]" * (MAX_DEPTH - 3)  # inside {"inputs":[{...}]}
        body = b'{"inputs":[{"name":"rgb","datatype":"FP32","shape":[1,3],"data":' + nested + b"}]}"
        reply = exchange(router.port, head(CLASSIFY, f"Content-Length: {len(body)}") + body)
        assert status_of(reply) == 400
        assert b"deeper than" not in reply


def test_excess_in_flight_requests_are_shed_with_503_before_any_work() -> None:
    """max_in_flight 2 and a slow upstream: of 8 concurrent chats, 2 are served, 6 are 503
    overloaded with Retry-After, all 6 answered before the first slow one finishes; the upstream
    sees only the 2."""
    fake = FakeUpstream("central", behaviour=Behaviour(delay_s=1.5))
    with AppThread(fake.app) as upstream:
        settings = chat_forwarding_settings(upstream.url, limits={"max_in_flight": 2})
        with RouterThread(settings) as router:
            results = asyncio.run(_burst(router.url, 8))
    order = [status for status, _ in results]
    assert sorted(order) == [200, 200] + [503] * 6
    assert order.index(200) == 6  # every refusal came back before any success
    assert all(retry == "1" for status, retry in results if status == 503)
    assert len(fake.received) == 2


async def _burst(url: str, n: int) -> list[tuple[int, str | None]]:
    done: list[tuple[int, str | None]] = []
    body = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> None:
            async with http.post(url + CHAT, data=body) as response:
                await response.read()
                done.append((response.status, response.headers.get("Retry-After")))

        await asyncio.gather(*(one() for _ in range(n)))
    return done


def test_connections_past_the_cap_get_503_and_are_closed() -> None:
    """max_connections 3: a 4th connection is answered 503 + Retry-After and closed; once one
    of the three closes, a new connection is served."""
    settings = Settings.model_validate(
        {"limits": {"max_connections": 3}, "models": {"repository": str(EDGE_MODELS)}}
    )
    with RouterThread(settings) as router:
        held = [
            socket.create_connection(("127.0.0.1", router.port), timeout=TIMEOUT_S)
            for _ in range(3)
        ]
        try:
            with socket.create_connection(("127.0.0.1", router.port), timeout=TIMEOUT_S) as extra:
                reply = answer(extra)
            assert status_of(reply) == 503
            assert b"Retry-After: 1" in reply
            held.pop().close()
            closed = threading.Event()
            closed.wait(0.3)  # the router notices the close
            ready = "GET /v2/health/ready HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n"
            assert status_of(exchange(router.port, ready.encode())) == 200
        finally:
            for sock in held:
                sock.close()


async def test_a_client_that_sends_at_once_still_reads_the_503(tmp_path: Path) -> None:
    """Past the cap, on the real server (uvloop), a client that sends its request right after
    connecting (as curl and every HTTP library do) reads the 503, not a reset or nothing."""
    config = tmp_path / "site.yaml"
    config.write_text("limits: {max_connections: 1}\nadmin: {enabled: false}\n")
    args = [sys.executable, "-m", "router", "serve", "--port", "0", "--config", config]
    ready = b"GET /v2/health/ready HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n"
    async with spawn(*args, stderr=tmp_path / "stderr") as child:
        port = int(child.url.rsplit(":", 1)[1])

        def refused_statuses() -> list[int]:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S):
                time.sleep(0.2)  # the router has counted the held connection
                statuses = []
                for _ in range(5):
                    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as extra:
                        extra.sendall(ready)
                        time.sleep(0.05)  # the router has answered and shut its side first
                        statuses.append(status_of(answer(extra)))
                return statuses

        assert await asyncio.to_thread(refused_statuses) == [503] * 5
    assert "Traceback" not in (tmp_path / "stderr").read_text()
    assert "AssertionError" not in (tmp_path / "stderr").read_text()


def test_silent_and_idle_connections_are_closed_on_the_configured_clock() -> None:
    """header_timeout_s 0.5 and idle_timeout_s 3: a connection that says nothing and one that
    sends half a head are closed before the client's 2.5 s patience runs out (so by the head
    deadline, not the idle timeout); a keep-alive connection is closed after its answer."""
    settings = Settings.model_validate(
        {
            "limits": {"header_timeout_s": 0.5, "idle_timeout_s": 3},
            "models": {"repository": str(EDGE_MODELS)},
        }
    )
    with RouterThread(settings) as router:
        address = ("127.0.0.1", router.port)
        with socket.create_connection(address, timeout=2.5) as silent:
            assert answer(silent) == b""
        with socket.create_connection(address, timeout=2.5) as half:
            half.sendall(b"POST /v2/models/color_classifier/infer HTTP/1.1\r\nHost: r\r\n")
            assert answer(half) == b""
        with socket.create_connection(address, timeout=6) as idle:
            keep = head(CLASSIFY, f"Content-Length: {len(RGB)}", "Connection: keep-alive")
            idle.sendall(keep + RGB)
            reply = answer(idle)  # the answer, then the close once idle
        assert status_of(reply) == 200
