"""A long plain (non-SSE) upstream answer flows through the router as it arrives instead of
being read whole first: the client has its first bytes before the upstream finished, the
router holds a few chunks, not the answer; the bytes are the upstream's; the audit record
digests exactly them and is written before the answer is complete; an upstream that breaks
off, or an answer over `max_response_bytes`, reaches the client as a broken response, never a
complete one; a client that leaves cancels the upstream request; an answer whose tokens must
be restored, or that the cache keeps, is still read whole. Real aiohttp upstreams and the real
router app on 127.0.0.1, with both upstream clients."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import random
import shutil
import socket
import threading
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from router.api.draining import end_streams
from router.api.state import CACHE, SPOOL, STATUS, TELEMETRY, UPSTREAMS
from router.app import build_app
from router.audit import show
from router.audit.writer import Writer
from router.resources import default_policy_bundle
from router.settings import Settings
from router.testing import central_chat_cluster, serving

MODEL = "gpt-test"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
CHUNK = 32 * 1024
RELAY_OVER = 64 * 1024  # the tests' relay_over_bytes: a few chunks
# The cluster settings every test here starts from (a test's own go on top).
RELAYING: dict[str, Any] = {
    "request_timeout_ms": 5000,
    "retry": {"base_backoff_ms": 1, "max_backoff_ms": 5},
    "relay_over_bytes": RELAY_OVER,
}
LIMIT_S = 20.0
# A client that asks for no content-coding: the Content-Length it gets is the upstream's.
PLAIN = ("Accept-Encoding",)


@dataclass
class Big:
    """An upstream answering every chat request with `body`, in CHUNK pieces, declaring its
    length (`sized`) or not (chunked); it pauses after `pause_at` bytes until `go` is set
    (or `pause_s` passed), breaks off after `cut_at`, and notes what it did in `events`."""

    body: bytes
    sized: bool = True
    pause_at: int | None = None
    pause_s: float = 3.0
    cut_at: int | None = None
    gap_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0
    reply: Callable[[dict[str, Any]], bytes] | None = None  # the body made from the request

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.answer)
        return app

    async def answer(self, request: web.Request) -> web.StreamResponse:
        doc = await request.json()
        self.requests.append(doc)
        body = self.reply(doc) if self.reply is not None else self.body
        headers = {"Content-Type": "application/octet-stream", **self.headers}
        if self.sized:
            headers["Content-Length"] = str(len(body))
        response = web.StreamResponse(headers=headers)
        if not self.sized:
            response.enable_chunked_encoding()
        await response.prepare(request)
        view = memoryview(body)
        finished = False
        try:
            for start in range(0, len(body), CHUNK):
                if self.pause_at is not None and start == self.pause_at:
                    self.events.append("upstream paused mid-answer")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.go.wait(), self.pause_s)
                if self.cut_at is not None and start >= self.cut_at:
                    self.events.append("upstream broke off")
                    assert request.transport is not None
                    request.transport.close()
                    finished = True
                    return response
                await response.write(view[start : start + CHUNK])
                self.sent = start + len(view[start : start + CHUNK])
                if self.gap_s:
                    await asyncio.sleep(self.gap_s)
            await response.write_eof()
            finished = True
        finally:
            if not finished:  # its connection closed under it (a write failed, or cancelled)
                self.gone.set()
        self.events.append("upstream finished")
        return response


def noise(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


async def router_for(
    stack: contextlib.AsyncExitStack,
    tmp_path: Path,
    upstream: Big,
    client: str = "h1",
    *,
    cache: bool = False,
    fsync: str = "batch",
    sections: dict[str, Any] | None = None,
    **cluster: Any,
) -> tuple[web.Application, str, Path]:
    """The real router in front of `upstream`, auditing to its own log, with any other
    settings `sections` on top; returns the app, its base URL and the audit folder."""
    url = await stack.enter_async_context(serving(upstream.app()))
    (tmp_path / "models").mkdir(exist_ok=True)
    audit = tmp_path / "audit"
    settings = Settings.model_validate(
        {
            "site": {"id": "plant-7"},
            "models": {"repository": str(tmp_path / "models"), "inference_threads": 1},
            "audit": {"path": str(audit), "fsync": fsync},
            "cache": {"enabled": cache},
            "upstreams": [
                central_chat_cluster(url, MODEL, **(RELAYING | {"client": client} | cluster))
            ],
            **(sections or {}),
        }
    )
    app = build_app(settings)
    return app, await stack.enter_async_context(serving(app)), audit


@dataclass
class Received:
    status: int
    headers: Any
    body: bytes
    error: type[BaseException] | None  # how reading the body failed, if it did


async def post(
    url: str,
    doc: Any = CHAT,
    on_first: Callable[[], None] = lambda: None,
    skip: tuple[str, ...] = PLAIN,
    stop_after: int | None = None,
) -> Received:
    """POST a chat request and read the answer chunk by chunk (`on_first` at its first bytes),
    noting how the body ended; `stop_after`: leave once that many bytes came."""
    body = bytearray()
    error: type[BaseException] | None = None
    async with answer(url, doc, skip) as response:
        try:
            async for chunk in response.content.iter_any():
                if not body:
                    on_first()
                body += chunk
                if stop_after is not None and len(body) >= stop_after:
                    response.close()
                    break
        except aiohttp.ClientPayloadError as exc:
            error = type(exc)
        return Received(response.status, response.headers, bytes(body), error)


@contextlib.asynccontextmanager
async def answer(
    url: str, doc: Any = CHAT, skip: tuple[str, ...] = PLAIN
) -> AsyncIterator[aiohttp.ClientResponse]:
    """The open answer to a chat request, on a session of its own, bounded in time."""
    async with (
        asyncio.timeout(LIMIT_S),
        aiohttp.ClientSession(skip_auto_headers=skip) as http,
        http.post(f"{url}/v1/chat/completions", json=doc) as response,
    ):
        yield response


def record(audit: Path, audit_id: str) -> dict[str, Any]:
    (found,) = show(audit, audit_id).records
    entry: dict[str, Any] = found.entry
    return entry


def output_digest(app: web.Application, body: bytes) -> str:
    return app[CACHE].digester.digest("output", body)


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
async def test_the_first_bytes_arrive_before_the_upstream_finished(
    stack: contextlib.AsyncExitStack, tmp_path: Path, client: str, sized: bool
) -> None:
    """The upstream stops halfway until the client has bytes: the client gets them meanwhile,
    then the whole answer, byte for byte, with the upstream's Content-Length when it gave
    one; the record, in the log, digests exactly those bytes; one upstream request, one
    request counted."""
    upstream = Big(noise(2 * 1024 * 1024), sized=sized, pause_at=1024 * 1024)
    app, url, audit = await router_for(stack, tmp_path, upstream, client)

    def first_bytes() -> None:
        upstream.events.append("client has bytes")
        upstream.go.set()

    got = await post(url, on_first=first_bytes)
    assert got.status == 200
    assert got.error is None
    assert upstream.events == [
        "upstream paused mid-answer",
        "client has bytes",
        "upstream finished",
    ]
    assert got.body == upstream.body
    if sized:
        assert got.headers["Content-Length"] == str(len(upstream.body))
    else:
        assert "Content-Length" not in got.headers
        assert got.headers["Transfer-Encoding"] == "chunked"
    assert got.headers["Content-Type"] == "application/octet-stream"
    entry = record(audit, got.headers["X-Audit-Id"])
    assert entry["status"] == 200
    assert entry["output"] == output_digest(app, upstream.body)
    assert entry["reasons"] == ["forward:central"]
    assert len(upstream.requests) == 1
    assert app[UPSTREAMS].clusters["central"].active == 0  # its place given back
    counts = app[TELEMETRY].requests.requests
    await until(lambda: bool(counts))  # counted once the handler ends
    assert counts == {("openai", "central", "ok"): 1}


async def test_a_compressing_client_gets_the_same_bytes(
    stack: contextlib.AsyncExitStack, tmp_path: Path
) -> None:
    """A client that accepts gzip or deflate gets the relayed answer compressed as it flows (no
    Content-Length then), and the same bytes once inflated; the record digests them."""
    upstream = Big(b'{"text": "' + b"abcdefgh" * 256 * 1024 + b'"}', sized=True)
    app, url, audit = await router_for(stack, tmp_path, upstream)
    got = await post(url, skip=())
    assert got.status == 200
    assert got.error is None
    assert got.headers["Content-Encoding"] in ("gzip", "deflate")
    assert "Content-Length" not in got.headers
    assert got.body == upstream.body
    assert record(audit, got.headers["X-Audit-Id"])["output"] == output_digest(app, got.body)


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
async def test_the_router_holds_a_few_chunks_not_the_answer(
    stack: contextlib.AsyncExitStack, tmp_path: Path, sized: bool
) -> None:
    """A 32 MiB answer through a router with the default relay_over_bytes (1 MiB): the most
    memory allocated at once in this process (router, upstream and client alike) during the
    answer stays a few MiB, where reading it whole would take twice the answer."""
    size = 32 * 1024 * 1024
    upstream = Big(noise(size), sized=sized)
    _, url, _ = await router_for(stack, tmp_path, upstream, relay_over_bytes=1024 * 1024)
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        async with answer(url) as response:
            assert response.status == 200
            async for chunk in response.content.iter_any():
                digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.digest() == hashlib.sha256(upstream.body).digest()
    held = peak - base
    assert held < 4 * 1024 * 1024, f"{held / 2**20:.1f} MiB held at once"


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
async def test_an_upstream_that_breaks_off_is_a_broken_answer(
    stack: contextlib.AsyncExitStack, tmp_path: Path, client: str, sized: bool
) -> None:
    """The upstream closes its connection halfway: the client's read fails (short of the
    Content-Length, or no chunked terminator) instead of ending as if complete; no retry;
    the record says `stream_error` and digests exactly the bytes the client got."""
    upstream = Big(noise(1024 * 1024), sized=sized, cut_at=512 * 1024)
    app, url, audit = await router_for(stack, tmp_path, upstream, client)
    got = await post(url)
    assert got.status == 200
    assert got.error is aiohttp.ClientPayloadError
    assert 0 < len(got.body) < len(upstream.body)
    assert got.body == upstream.body[: len(got.body)]
    assert len(upstream.requests) == 1
    entry = record(audit, got.headers["X-Audit-Id"])
    assert entry["reasons"] == ["forward:central", "stream_error:upstream_stream_broken"]
    assert entry["output"] == output_digest(app, got.body)


async def test_an_answer_over_the_limit_is_cut_there(
    stack: contextlib.AsyncExitStack, tmp_path: Path
) -> None:
    """An undeclared length running past max_response_bytes after the relay began: the client
    gets a broken answer of at most the limit, the upstream connection is closed before the
    upstream could send it all, the record names the cut."""
    limit = 256 * 1024
    upstream = Big(noise(4 * 1024 * 1024), sized=False, gap_s=0.002)
    app, url, audit = await router_for(stack, tmp_path, upstream, max_response_bytes=limit)
    got = await post(url)
    assert got.status == 200
    assert got.error is aiohttp.ClientPayloadError
    assert RELAY_OVER < len(got.body) <= limit
    async with asyncio.timeout(LIMIT_S):
        await upstream.gone.wait()
    assert upstream.sent < len(upstream.body)
    entry = record(audit, got.headers["X-Audit-Id"])
    assert entry["reasons"][-1] == "stream_error:upstream_response_too_large"
    assert entry["output"] == output_digest(app, got.body)


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
async def test_a_limit_below_the_relay_bar_keeps_the_clear_502(
    stack: contextlib.AsyncExitStack, tmp_path: Path, sized: bool
) -> None:
    """With max_response_bytes below relay_over_bytes nothing is relayed: an answer over the
    limit, declared or not, is the clear 502 upstream_response_too_large it always was."""
    upstream = Big(noise(1024 * 1024), sized=sized)
    _, url, _ = await router_for(
        stack, tmp_path, upstream, max_response_bytes=256 * 1024, relay_over_bytes=512 * 1024
    )
    got = await post(url)
    assert got.status == 502
    assert orjson.loads(got.body)["error"]["code"] == "upstream_response_too_large"


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
async def test_a_client_that_leaves_cancels_the_upstream_request(
    stack: contextlib.AsyncExitStack, tmp_path: Path, client: str
) -> None:
    """The client reads the first bytes and leaves: the upstream's connection is closed under
    it long before it finished, and the cluster's place is given back."""
    upstream = Big(noise(8 * 1024 * 1024), sized=True, gap_s=0.005)
    app, url, _ = await router_for(stack, tmp_path, upstream, client)
    got = await post(url, stop_after=RELAY_OVER)
    assert got.status == 200
    async with asyncio.timeout(LIMIT_S):
        await upstream.gone.wait()
    assert upstream.sent < len(upstream.body) // 2
    assert "upstream finished" not in upstream.events
    cluster = app[UPSTREAMS].clusters["central"]
    await until(lambda: cluster.active == 0)


def leaving_upstream(stream: bool, gap_s: float) -> Big:
    """A long answer, an SSE stream or a plain body, to be left mid-way."""
    if stream:
        events = (b'data: {"n": %d, "pad": "%s"}\n\n' % (n, b"x" * 1000) for n in range(16000))
        sse = {"Content-Type": "text/event-stream"}
        return Big(b"".join(events), sized=False, gap_s=gap_s, headers=sse)
    return Big(noise(16 * 1024 * 1024), sized=True, gap_s=gap_s)


def left_mid_answer(app: web.Application, upstream: Big, entry: dict[str, Any]) -> None:
    """The record of an answer whose client left mid-way: the status sent, the reason
    client_gone, the digest of fewer bytes than the whole answer."""
    assert (entry["status"], entry["reasons"]) == (200, ["forward:central", "client_gone"])
    assert entry["output"] not in (None, output_digest(app, upstream.body))


async def audit_id_written(audit: Path, audit_id: str = "") -> str:
    """The id of the log's one record, once written (`audit_id`: that record's)."""
    await until(lambda: any(audit_id.encode() in f.read_bytes() for f in audit.glob("*.jsonl")))
    return audit_id or only_record_id(audit)


def only_record_id(audit: Path) -> str:
    (line,) = b"".join(f.read_bytes() for f in audit.glob("*.jsonl")).split()
    found: str = orjson.loads(line)["id"]
    return found


@pytest.mark.parametrize("stream", [False, True], ids=["relayed", "sse"])
async def test_a_client_that_leaves_mid_answer_has_a_record_saying_so(
    stack: contextlib.AsyncExitStack, tmp_path: Path, stream: bool
) -> None:
    """A client (aiohttp) that reads the first bytes of a relayed answer or an SSE stream and
    closes the response, the router waiting on the upstream, gets a record keeping the status
    sent (200) with the reason client_gone, its output digest that of the bytes sent only."""
    upstream = leaving_upstream(stream, gap_s=0.005)
    app, url, audit = await router_for(stack, tmp_path, upstream)
    got = await post(url, {**CHAT, "stream": stream}, stop_after=RELAY_OVER)
    assert got.status == 200
    audit_id = await audit_id_written(audit, got.headers["X-Audit-Id"])
    left_mid_answer(app, upstream, record(audit, audit_id))


@pytest.mark.parametrize("stream", [False, True], ids=["relayed", "sse"])
async def test_a_client_that_leaves_with_its_window_full_has_a_record_saying_so(
    stack: contextlib.AsyncExitStack, tmp_path: Path, stream: bool
) -> None:
    """As above for a client that read nothing and leaves while the router waits to write to
    it (its window full): the record keeps status 200 with the reason client_gone."""
    upstream = leaving_upstream(stream, gap_s=0.0)
    app, url, audit = await router_for(stack, tmp_path, upstream)
    async with not_reading(url, {**CHAT, "stream": stream}):
        cluster = app[UPSTREAMS].clusters["central"]
        await until(lambda: cluster.active == 1)
        await asyncio.sleep(0.3)  # the router's writes to the client fill its window
    async with asyncio.timeout(LIMIT_S):
        await upstream.gone.wait()
    audit_id = await audit_id_written(audit)
    left_mid_answer(app, upstream, record(audit, audit_id))


async def test_the_record_is_written_before_the_answer_is_complete(
    stack: contextlib.AsyncExitStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fsync `always` and the audit writer stalled, the upstream's whole answer is in but
    the client's is not: its last chunk waits for the record; released, the answer completes
    and its record is in the log."""
    stalled = threading.Event()
    original = Writer._handle

    def stall(self: Writer, *args: Any) -> Any:
        stalled.wait(LIMIT_S)
        return original(self, *args)

    monkeypatch.setattr(Writer, "_handle", stall)
    upstream = Big(noise(512 * 1024), sized=True)
    _, url, audit = await router_for(stack, tmp_path, upstream, fsync="always")
    received = 0
    try:
        async with answer(url) as response:
            reading = asyncio.ensure_future(response.read())
            await until(lambda: "upstream finished" in upstream.events)
            await asyncio.sleep(0.2)  # time for a last chunk that would not wait
            assert not reading.done()
            received = response.content.total_bytes
            stalled.set()
            body = await reading
    finally:
        stalled.set()
    assert received < len(upstream.body)
    assert body == upstream.body
    assert record(audit, response.headers["X-Audit-Id"])["status"] == 200


async def test_an_answer_with_tokens_to_restore_is_read_whole(
    stack: contextlib.AsyncExitStack, tmp_path: Path
) -> None:
    """An e-mail goes to central as a token; central's long answer repeats it: the answer is
    read whole (Content-Length of the restored body) and reaches the client restored."""
    email = "jane.relay@example.com"
    upstream = Big(b"", sized=True)

    def echo(doc: dict[str, Any]) -> bytes:
        said = doc["messages"][0]["content"]
        text = f"{said} {'x' * (2 * RELAY_OVER)}"
        return orjson.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]})

    upstream.reply = echo
    upstream.headers["Content-Type"] = "application/json"
    _, url, _ = await router_for(stack, tmp_path, upstream)
    doc = {"model": MODEL, "messages": [{"role": "user", "content": f"mail {email}"}]}
    got = await post(url, doc)
    assert got.status == 200
    assert got.error is None
    assert email not in str(upstream.requests[0])
    content = orjson.loads(got.body)["choices"][0]["message"]["content"]
    assert content.startswith(f"mail {email} x")
    assert got.headers["Content-Length"] == str(len(got.body))
    assert got.headers["X-Redactions"] == "EMAIL=1"


async def test_an_answer_the_cache_keeps_is_read_whole(
    stack: contextlib.AsyncExitStack, tmp_path: Path
) -> None:
    """A long answer marked cacheable by its upstream is read whole and kept: the second
    request is a HIT with the same bytes, the upstream asked once."""
    upstream = Big(noise(512 * 1024), sized=False, headers={"Cache-Control": "max-age=60"})
    _, url, _ = await router_for(stack, tmp_path, upstream, cache=True)
    first = await post(url)
    second = await post(url)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert first.body == second.body == upstream.body
    assert first.headers["Content-Length"] == str(len(upstream.body))  # read whole
    assert len(upstream.requests) == 1


async def test_an_answer_shared_by_coalesced_requests_is_read_whole(
    stack: contextlib.AsyncExitStack, tmp_path: Path
) -> None:
    """Two identical requests at once share one upstream answer (coalesced) that the cache
    does not keep (max-age=0): the leader reads it whole, so both clients get all of it."""
    upstream = Big(noise(512 * 1024), sized=True, pause_at=0, pause_s=LIMIT_S)
    upstream.headers["Cache-Control"] = "max-age=0"
    sections = {"cache": {"enabled": True, "openai_ttl_s": 60}}
    _, url, _ = await router_for(stack, tmp_path, upstream, sections=sections)

    async def release_when_both_asked() -> None:
        await until(lambda: bool(upstream.events))
        await asyncio.sleep(1.0)  # the second request joins the first one's flight
        upstream.go.set()

    releasing = asyncio.ensure_future(release_when_both_asked())
    first, second = await asyncio.gather(post(url), post(url))
    await releasing
    assert len(upstream.requests) == 1
    assert first.body == second.body == upstream.body


async def test_an_answer_due_for_a_spool_sample_is_read_whole(
    stack: contextlib.AsyncExitStack, tmp_path: Path
) -> None:
    """With every answer sampled, a long answer is read whole (the sample desensitizes it
    whole): the client gets it with the Content-Length the router computed, and the sample
    is spooled."""
    bundle = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), bundle)
    (bundle / "sampling.yaml").write_text("default: 1.0\n", encoding="utf-8")
    text = b"y" * (4 * RELAY_OVER)
    upstream = Big(b'{"choices": [{"message": {"content": "' + text + b'"}}]}', sized=False)
    upstream.headers["Content-Type"] = "application/json"
    sections = {
        "policy": {"bundle": str(bundle)},
        "audit": {"enabled": False},  # the spool's only record is then the sample
        "spool": {"path": str(tmp_path / "spool.sqlite3")},
    }
    app, url, _ = await router_for(stack, tmp_path, upstream, sections=sections)
    got = await post(url)
    assert got.body == upstream.body
    assert got.headers["Content-Length"] == str(len(upstream.body))
    spool = app[SPOOL].spool
    assert spool is not None
    for _ in range(200):  # samples are spooled after the answer went out
        if (await spool.counts()).produced:
            break
        await asyncio.sleep(0.05)
    assert (await spool.counts()).produced == 1


async def test_a_drain_out_of_time_cuts_a_relayed_answer(
    stack: contextlib.AsyncExitStack, tmp_path: Path
) -> None:
    """A drain that runs out of time ends an answer still flowing by cutting its connection
    (no complete-looking end); the record says `stream_error:shutting_down`."""
    upstream = Big(noise(1024 * 1024), sized=False, pause_at=512 * 1024, pause_s=LIMIT_S)
    app, url, audit = await router_for(stack, tmp_path, upstream)

    async def drain_when_paused() -> int:
        await until(lambda: bool(upstream.events))
        await asyncio.sleep(0.1)  # the first half relayed meanwhile
        return end_streams(app[STATUS])

    drained = asyncio.ensure_future(drain_when_paused())
    got = await post(url)
    assert await drained == 1
    upstream.go.set()
    assert got.status == 200
    assert got.error is aiohttp.ClientPayloadError
    assert got.body == upstream.body[: len(got.body)]
    entry = record(audit, got.headers["X-Audit-Id"])
    assert entry["reasons"][-1] == "stream_error:shutting_down"
    assert entry["output"] == output_digest(app, got.body)


async def test_a_short_answer_keeps_the_whole_way(
    stack: contextlib.AsyncExitStack, tmp_path: Path
) -> None:
    """An undeclared length that ends within relay_over_bytes is read whole: the client gets
    it with a Content-Length the router computed."""
    upstream = Big(noise(RELAY_OVER // 2), sized=False)
    _, url, _ = await router_for(stack, tmp_path, upstream)
    got = await post(url)
    assert got.body == upstream.body
    assert got.headers["Content-Length"] == str(len(upstream.body))


async def until(check: Callable[[], bool], limit_s: float = LIMIT_S) -> None:
    """Poll `check` (a cheap read) until it holds, within `limit_s`."""
    for _ in range(int(limit_s / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("never reached the expected state")


async def http10_post(url: str, extra: str = "") -> tuple[bytes, bytes]:
    """POST a chat request as an HTTP/1.0 client on a raw socket, reading until the router
    closes the connection (how HTTP/1.0 ends a body of unstated length): its head and body."""
    body = orjson.dumps(CHAT)
    request = (
        "POST /v1/chat/completions HTTP/1.0\r\nHost: router\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body
    host, port = url.removeprefix("http://").split(":")
    async with asyncio.timeout(LIMIT_S):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(request)
            received = await reader.read(-1)
        finally:
            writer.close()
    head, _, rest = received.partition(b"\r\n\r\n")
    return head, rest


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("coding", ["", "Accept-Encoding: gzip\r\n"], ids=["plain", "gzip"])
async def test_an_http10_client_never_takes_a_cut_answer_for_a_whole_one(
    stack: contextlib.AsyncExitStack, tmp_path: Path, sized: bool, coding: str
) -> None:
    """An HTTP/1.0 client knows a body has ended only by its Content-Length or the connection
    closing: an upstream breaking off halfway must never reach it as a 200 without a
    Content-Length (its cut would look like the end), compressed or not."""
    upstream = Big(noise(1024 * 1024), sized=sized, cut_at=512 * 1024)
    _, url, _ = await router_for(stack, tmp_path, upstream)
    head, body = await http10_post(url, coding)
    status = head.split(b"\r\n")[0]
    if b" 200 " in status:
        lengths = [
            line.split(b":", 1)[1].strip()
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        ]
        assert lengths, "a cut 200 answer without a Content-Length looks complete"
        assert len(body) < int(lengths[0])
    else:
        assert b" 502 " in status


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
async def test_an_http10_client_gets_a_whole_answer_with_its_length(
    stack: contextlib.AsyncExitStack, tmp_path: Path, sized: bool
) -> None:
    """An HTTP/1.0 client asking for gzip gets a long answer whole, with the Content-Length
    of the bytes it got (compressed or not), so it can tell the answer is complete."""
    upstream = Big(noise(1024 * 1024), sized=sized)
    _, url, _ = await router_for(stack, tmp_path, upstream)
    head, body = await http10_post(url, "Accept-Encoding: gzip\r\n")
    assert head.startswith(b"HTTP/1.0 200 ")
    assert f"Content-Length: {len(body)}".encode() in head
    if b"Content-Encoding: gzip" in head:
        body = gzip.decompress(body)
    assert body == upstream.body


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
@pytest.mark.parametrize("size", [4 * 1024, 512 * 1024], ids=["short", "long"])
async def test_a_no_store_answer_in_lower_case_is_never_kept(
    stack: contextlib.AsyncExitStack, tmp_path: Path, client: str, size: int
) -> None:
    """An upstream spelling its fields in lower case (`cache-control: no-store`, as many
    servers do; header names are case-insensitive) is heard by the cache and the relay alike:
    its answer is never kept, nor handed to the next client, and a long one is relayed."""
    upstream = Big(noise(size), sized=True, headers={"cache-control": "no-store"})
    sections = {"cache": {"enabled": True, "openai_ttl_s": 60}}
    _, url, _ = await router_for(stack, tmp_path, upstream, client, sections=sections)
    first = await post(url)
    second = await post(url)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "MISS")
    assert first.body == second.body == upstream.body
    assert len(upstream.requests) == 2
    assert second.headers["Cache-Control"] == "no-store"


@contextlib.asynccontextmanager
async def not_reading(url: str, doc: Any = CHAT) -> AsyncIterator[asyncio.StreamReader]:
    """A chat request on a raw connection whose client then reads nothing (a 4 KiB window,
    soon full); the reader, for the head once the test is done waiting."""
    body = orjson.dumps(doc)
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        yield reader
    finally:
        writer.close()


def served_connections(url: str) -> int:
    """How many established TCP connections the server at `url` holds (Linux's table)."""
    port = f":{int(url.rsplit(':', 1)[1]):04X}"
    rows = Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()[1:]
    return sum(1 for row in rows if row.split()[1].endswith(port) and row.split()[3] == "01")


async def audit_id_of(reader: asyncio.StreamReader) -> str:
    head = await reader.readuntil(b"\r\n\r\n")
    return next(
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"x-audit-id:")
    )


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
async def test_a_client_that_stops_reading_gives_the_upstream_back(
    stack: contextlib.AsyncExitStack, tmp_path: Path, client: str
) -> None:
    """A client that asks for a long answer and then reads nothing (its connection open, its
    window full) holds neither the cluster's place nor the upstream's connection for ever:
    after request_timeout_ms without taking a byte its connection is cut, the upstream
    request cancelled, and the record says so."""
    upstream = Big(noise(16 * 1024 * 1024), sized=True)
    app, url, audit = await router_for(stack, tmp_path, upstream, client, request_timeout_ms=500)
    async with not_reading(url) as reader:
        cluster = app[UPSTREAMS].clusters["central"]
        await until(lambda: cluster.active == 1)
        async with asyncio.timeout(10):  # 20 times the idle time
            await upstream.gone.wait()  # cancelled, though the client never left
        await until(lambda: cluster.active == 0)
        await until(lambda: served_connections(url) == 0)  # dropped, not left to flush
        audit_id = await audit_id_of(reader)
    assert "upstream finished" not in upstream.events
    entry = record(audit, audit_id)
    assert entry["reasons"] == ["forward:central", "stream_error:client_stalled"]


async def test_a_drain_that_cuts_an_answer_waiting_on_its_client_says_so(
    stack: contextlib.AsyncExitStack, tmp_path: Path
) -> None:
    """A drain out of time that finds a relayed answer waiting for its slow client (not for
    the upstream) cuts it too, and its record says `stream_error:shutting_down`, not a
    complete answer."""
    upstream = Big(noise(16 * 1024 * 1024), sized=True)
    app, url, audit = await router_for(stack, tmp_path, upstream)
    async with not_reading(url) as reader:
        cluster = app[UPSTREAMS].clusters["central"]
        await until(lambda: cluster.active == 1)
        await asyncio.sleep(0.3)  # the router's writes to the client fill its window
        assert end_streams(app[STATUS]) == 1
        await until(lambda: cluster.active == 0)
        audit_id = await audit_id_of(reader)
    entry = record(audit, audit_id)
    assert entry["reasons"] == ["forward:central", "stream_error:shutting_down"]


async def test_a_drain_that_cuts_a_stream_waiting_on_its_client_says_so(
    stack: contextlib.AsyncExitStack, tmp_path: Path
) -> None:
    """As for a relayed answer: an SSE stream cut by a drain while it waited for its slow
    client has the reason `stream_error:shutting_down` in its record."""
    events = b"".join(b'data: {"n": %d, "pad": "%s"}\n\n' % (n, b"x" * 1000) for n in range(16000))
    upstream = Big(events, sized=False, headers={"Content-Type": "text/event-stream"})
    app, url, audit = await router_for(stack, tmp_path, upstream)
    async with not_reading(url, {**CHAT, "stream": True}) as reader:
        cluster = app[UPSTREAMS].clusters["central"]
        await until(lambda: cluster.active == 1)
        await asyncio.sleep(0.3)  # the router's writes to the client fill its window
        assert end_streams(app[STATUS]) == 1
        await until(lambda: cluster.active == 0)
        audit_id = await audit_id_of(reader)
    entry = record(audit, audit_id)
    assert entry["reasons"] == ["forward:central", "stream_error:shutting_down"]


async def test_a_stream_client_that_stops_reading_gives_the_upstream_back(
    stack: contextlib.AsyncExitStack, tmp_path: Path
) -> None:
    """As for a relayed answer: an SSE stream's client that reads nothing is cut after
    request_timeout_ms, the upstream request cancelled, the record's reason
    `stream_error:client_stalled`."""
    events = b"".join(b'data: {"n": %d, "pad": "%s"}\n\n' % (n, b"x" * 1000) for n in range(16000))
    upstream = Big(events, sized=False, headers={"Content-Type": "text/event-stream"})
    app, url, audit = await router_for(stack, tmp_path, upstream, request_timeout_ms=500)
    async with not_reading(url, {**CHAT, "stream": True}) as reader:
        cluster = app[UPSTREAMS].clusters["central"]
        await until(lambda: cluster.active == 1)
        async with asyncio.timeout(10):  # 20 times the idle time
            await upstream.gone.wait()
        await until(lambda: cluster.active == 0)
        await until(lambda: served_connections(url) == 0)
        audit_id = await audit_id_of(reader)
    entry = record(audit, audit_id)
    assert entry["reasons"] == ["forward:central", "stream_error:client_stalled"]


async def test_a_private_answer_in_lower_case_is_not_shared_by_coalesced_requests(
    stack: contextlib.AsyncExitStack, tmp_path: Path
) -> None:
    """Two identical requests at once; the upstream answers `cache-control: private` in lower
    case (through the default h1 client, which keeps the spelling): the second request is
    not handed the first one's private answer, it asks the upstream itself."""
    upstream = Big(noise(4 * 1024), sized=True, pause_at=0, pause_s=LIMIT_S)
    upstream.headers["cache-control"] = "private"
    sections = {"cache": {"enabled": True, "openai_ttl_s": 60}}
    _, url, _ = await router_for(stack, tmp_path, upstream, sections=sections)

    async def release_when_both_asked() -> None:
        await until(lambda: bool(upstream.events))
        await asyncio.sleep(1.0)  # the second request joins the first one's flight
        upstream.go.set()

    releasing = asyncio.ensure_future(release_when_both_asked())
    first, second = await asyncio.gather(post(url), post(url))
    await releasing
    assert first.body == second.body == upstream.body
    assert len(upstream.requests) == 2
