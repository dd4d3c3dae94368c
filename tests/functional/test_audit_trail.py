"""The audit trail on the request path (TESTING.md A1): every answer, local, forwarded, cached or
failed, carries an X-Audit-Id that resolves to a complete record in a log that verifies; a
cache hit points at the record of the answer's original generation; no raw value lands there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from router.app import build_app
from router.audit import AuditLog, AuditRecord, new_audit_id, show, verify
from router.audit.writer import Writer
from router.settings import Settings
from router.spool import Spool
from router.testing import FakeUpstream, RouterThread, chat_forwarding_settings, serving

EDGE_MODELS = Path(__file__).resolve().parents[2] / "edge_models"
CANARY = "audit.canary.7f3e@example.com"
LOCAL = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 1]}]}


class Site:
    def __init__(self, base: str, audit: Path, router: TestServer) -> None:
        self.base, self.audit, self._router = base, audit, router

    async def stop(self) -> None:
        """Close the router, and with it the log: everything written and synced."""
        await self._router.close()


@pytest.fixture
def fsync() -> str:
    """The site's audit fsync policy (a test may parametrize it)."""
    return "always"


@pytest.fixture
async def site(tmp_path: Path, fsync: str) -> AsyncIterator[Site]:
    fake = FakeUpstream(name="central", models=["gpt-test"])
    upstream = TestServer(fake.app(), host="127.0.0.1")
    await upstream.start_server()
    audit = tmp_path / "audit"
    settings = Settings.model_validate(
        {
            "site": {"id": "plant-7"},
            "models": {"repository": EDGE_MODELS, "inference_threads": 1},
            "audit": {"path": audit, "fsync": fsync},
            "upstreams": [
                {
                    "name": "central",
                    "tier": "central",
                    "models": ["gpt-test"],
                    "endpoints": [{"url": str(upstream.make_url("")).rstrip("/")}],
                    "health_check": {"enabled": False},
                }
            ],
        }
    )
    router = TestServer(build_app(settings), host="127.0.0.1")
    await router.start_server()
    try:
        yield Site(str(router.make_url("")).rstrip("/"), audit, router)
    finally:
        await router.close()
        await upstream.close()


async def _post(http: aiohttp.ClientSession, url: str, doc: Any) -> tuple[int, str]:
    async with asyncio.timeout(10), http.post(url, json=doc) as response:
        await response.read()
        return response.status, response.headers.get("X-Audit-Id", "")


class TestAuditTrail:
    async def test_every_answer_resolves_to_a_complete_record(self, site: tuple[str, Path]) -> None:
        """Local, forwarded, cached and failed answers each name a record; the log verifies;
        the cache hit's provenance leads to the original; the canary is nowhere in the log."""
        base, audit = site.base, site.audit
        chat = {"model": "gpt-test", "messages": [{"role": "user", "content": f"hi {CANARY}"}]}
        async with aiohttp.ClientSession() as http:
            local = await _post(http, base + "/v2/models/color_classifier/infer", LOCAL)
            cached = await _post(http, base + "/v2/models/color_classifier/infer", LOCAL)
            forwarded = await _post(http, base + "/v1/chat/completions", chat)
            failed = await _post(http, base + "/v2/models/no_such_model/infer", LOCAL)
        await site.stop()
        assert [a[0] for a in (local, cached, forwarded, failed)] == [200, 200, 200, 404]
        ids = [a[1] for a in (local, cached, forwarded, failed)]
        assert all(ids)
        assert len(set(ids)) == 4

        result = verify(audit / "plant-7.jsonl")
        assert result.ok, result.problem
        assert result.entries == 4
        assert CANARY.encode() not in (audit / "plant-7.jsonl").read_bytes()

        (first,) = show(audit, ids[0]).records
        record = first.entry
        assert record["site"] == "plant-7"
        assert record["tier"] == "edge"
        assert record["served_tier"] == "edge"
        assert record["model"] == "color_classifier"
        assert record["model_version"] == "2"
        assert len(record["model_sha256"]) == 64
        assert record["policy_revision"]
        assert record["time"].endswith("Z")
        assert record["inputs"]
        assert record["output"]
        assert record["cache"] == "MISS"

        provenance = show(audit, ids[1]).records
        assert [p.entry["id"] for p in provenance] == [ids[1], ids[0]]
        assert provenance[0].entry["cache"] == "HIT"
        assert provenance[0].entry["cache_of"] == ids[0]

        (chat_record,) = show(audit, ids[2]).records
        assert chat_record.entry["served_tier"] == "central"
        assert chat_record.entry["redactions"] == {"EMAIL": 1}
        assert chat_record.entry["data_class"] == "personal"

        (error_record,) = show(audit, ids[3]).records
        assert error_record.entry["status"] == 404

    async def test_unknown_model_name_stays_out_of_the_record(self, site: Site) -> None:
        """A model name nobody serves is what the client said, not what was served: a canary
        typed as the model (OpenAI body or v2 path) is not written to the audit record."""
        chat = {"model": CANARY, "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession() as http:
            openai = await _post(http, site.base + "/v1/chat/completions", chat)
            v2 = await _post(http, f"{site.base}/v2/models/{CANARY}/infer", LOCAL)
            served = await _post(http, site.base + "/v2/models/color_classifier/infer", LOCAL)
        await site.stop()
        assert [openai[0], v2[0], served[0]] == [404, 404, 200]
        assert CANARY.encode() not in (site.audit / "plant-7.jsonl").read_bytes()
        (record,) = show(site.audit, v2[1]).records
        assert record.entry["status"] == 404
        assert record.entry["model"] == ""
        (record,) = show(site.audit, served[1]).records
        assert record.entry["model"] == "color_classifier"

    async def test_credentials_used_as_json_keys_stay_out_of_the_record(self, site: Site) -> None:
        """An access key or token used as a JSON key looks like schema (letters, digits,
        underscores) but is no schema: it is digested in the record's paths, in a local
        request's (never scanned for leaving the site) and a forwarded one's; plain keys stay."""
        aws, github = "AKIAIOSFODNN7CANARYQ", "ghp_" + "canary0123456789abcdefghijklmnopqrst"
        local = {**LOCAL, "parameters": {aws: 1, "note": "x"}}
        chat = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession() as http:
            served = await _post(http, site.base + "/v2/models/color_classifier/infer", local)
            forwarded = await _post(
                http, site.base + "/v1/chat/completions", {**chat, "metadata": {github: "x"}}
            )
        await site.stop()
        assert [served[0], forwarded[0]] == [200, 200]
        log = (site.audit / "plant-7.jsonl").read_bytes()
        assert aws.encode() not in log
        assert github.encode() not in log
        (record,) = show(site.audit, served[1]).records
        assert "$.parameters.note" in record.entry["inputs"]
        assert any(path.startswith("$.parameters[#") for path in record.entry["inputs"])

    async def test_binary_tensor_is_digested_once_for_cache_and_record(
        self, site: Site, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A binary v2 body's tensor is hashed once per request, though both the cache key and
        the audit record name it: the key holds the record's digest (two tensors made to share
        one digest share a cache entry), and each record names its tensor by that digest."""
        from router.audit.record import Digester

        calls: list[int] = []
        real = Digester.tensors

        def counted(self: Digester, document: Any, binary: Any) -> dict[str, str]:
            calls.append(len(binary))
            found = real(self, document, binary)
            return dict.fromkeys(found, "forced") if bytes(binary) == COLLIDES else found

        monkeypatch.setattr(Digester, "tensors", counted)
        one, other = struct.pack("<3f", 1, 0, 0), struct.pack("<3f", 0, 0, 1)
        COLLIDES = other

        async with aiohttp.ClientSession() as http:
            first = await _post_binary(http, site.base, one)
            again = await _post_binary(http, site.base, one)
            changed = await _post_binary(http, site.base, other)
            monkeypatch.setattr(Digester, "tensors", lambda *_: {"$.inputs[0].binary": "forced"})
            collided = await _post_binary(http, site.base, struct.pack("<3f", 0, 1, 0))
        assert calls == [12, 12, 12]
        assert [r[0] for r in (first, again, changed, collided)] == ["MISS", "HIT", "MISS", "HIT"]
        await site.stop()
        (record,) = show(site.audit, first[1]).records
        (changed_record,) = show(site.audit, changed[1]).records
        assert len(record.entry["inputs"]["$.inputs[0].binary"]) == 64
        assert changed_record.entry["inputs"]["$.inputs[0].binary"] == "forced"


_HEADER = (
    b'{"inputs":[{"name":"rgb","shape":[1,3],"datatype":"FP32",'
    b'"parameters":{"binary_data_size":12}}]}'
)


async def _post_binary(http: aiohttp.ClientSession, base: str, values: bytes) -> tuple[str, str]:
    headers = {"Inference-Header-Content-Length": str(len(_HEADER))}
    url = base + "/v2/models/color_classifier/infer"
    async with asyncio.timeout(10), http.post(url, data=_HEADER + values, headers=headers) as r:
        assert r.status == 200, await r.text()
        return r.headers["X-Cache"], r.headers["X-Audit-Id"]


class TestRecordFirst:
    @pytest.mark.parametrize("fsync", ["batch", "never"])
    async def test_every_answer_is_recorded_in_the_file_before_it_is_sent(
        self, site: Site, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the audit writer thread stalled, a local, a forwarded, a streamed and a failed
        answer each reach the client only once their record is in the log file: a kill -9
        after a client got its X-Audit-Id leaves the record (the page cache outlives it)."""
        stalled = threading.Event()
        monkeypatch.setattr(Writer, "_handle", lambda *_: stalled.wait(30))
        chat = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
        log = site.audit / "plant-7.jsonl"
        ids = []
        try:
            async with aiohttp.ClientSession() as http:
                for url, doc in [
                    ("/v2/models/color_classifier/infer", LOCAL),
                    ("/v1/chat/completions", chat),
                    ("/v1/chat/completions", {**chat, "stream": True}),
                    ("/v2/models/no_such_model/infer", LOCAL),
                ]:
                    _, audit_id = await _post(http, site.base + url, doc)
                    assert audit_id.encode() in log.read_bytes(), url
                    ids.append(audit_id)
        finally:
            stalled.set()
            monkeypatch.undo()
        await site.stop()
        assert [show(site.audit, i).records[0].entry["status"] for i in ids] == [200] * 3 + [404]
        assert verify(log).ok


async def until(check: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Poll `check` (a cheap read) until it holds, within `limit_s`."""
    for _ in range(int(limit_s / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("never reached the expected state")


def chat_request(request_id: str, stream: bool) -> bytes:
    body = orjson.dumps(
        {"model": "gpt-test", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    )
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-Request-Id: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_gone_before_the_answer_leaves_a_record(
    tmp_path: Path, stream: bool
) -> None:
    """A client that disconnects while the upstream is still slow to answer (no header sent
    yet, stream or not) leaves a record: status 499 with the reason client_gone."""
    fake = FakeUpstream(name="central", models=["gpt-test"])
    fake.behaviour.delay_s = 5.0
    log = tmp_path / "audit" / "plant-7.jsonl"
    async with serving(fake.app()) as upstream_url:
        settings = chat_forwarding_settings(
            upstream_url, audit={"path": log.parent, "fsync": "never"}, site={"id": "plant-7"}
        )
        with RouterThread(settings) as router:
            reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
            writer.write(chat_request("gone-early", stream))
            await writer.drain()
            await until(lambda: bool(fake.received))  # forwarded: it waits on the upstream
            writer.close()  # before any byte of the answer
            await until(lambda: log.exists() and b"gone-early" in log.read_bytes())
            assert await reader.read() == b""
    (entry,) = map(orjson.loads, log.read_bytes().split())
    assert (entry["request_id"], entry["status"]) == ("gone-early", 499)
    assert entry["reasons"][-1] == "client_gone"
    assert entry["model"] == "gpt-test"
    assert verify(log).ok


async def test_a_client_leaving_after_the_done_event_got_the_whole_stream(
    tmp_path: Path,
) -> None:
    """A client that closes as soon as it read `data: [DONE]` (the openai SDK does), while the
    router still waits for the upstream's end (a chained router's comes a moment later), got
    the whole answer: its record says 200 with the route's reasons, not client_gone."""
    ended = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": []}\n\ndata: [DONE]\n\n')
        with contextlib.suppress(ConnectionError):
            await ended.wait()  # its end comes later
            await response.write_eof()
        return response

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", chat)
    log = tmp_path / "audit" / "plant-7.jsonl"
    async with serving(upstream) as upstream_url:
        settings = chat_forwarding_settings(
            upstream_url, audit={"path": log.parent, "fsync": "never"}, site={"id": "plant-7"}
        )
        with RouterThread(settings) as router:
            reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
            writer.write(chat_request("gone-after-done", True))
            await writer.drain()
            received = b""
            async with asyncio.timeout(10):
                while b"data: [DONE]" not in received:
                    received += await reader.read(65536)
            writer.close()  # before the stream's end
            await until(lambda: log.exists() and b"gone-after-done" in log.read_bytes())
            ended.set()
    (entry,) = map(orjson.loads, log.read_bytes().split())
    assert (entry["status"], entry["reasons"]) == (200, ["forward:central"])


async def test_a_stream_that_came_with_an_error_event_is_recorded_so(tmp_path: Path) -> None:
    """An upstream (a chained layer-router whose own upstream broke off) ends its stream with
    an error event: the client's record says so with the event's code, as the router that
    wrote the event says; a code that is no plain name is recorded as upstream_error."""
    codes = iter([b'"upstream_stream_broken"', b'"4111 1111 1111 1111"'])

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        error = b'{"error": {"message": "cut", "type": "server_error", "code": %s}}' % next(codes)
        await response.write(b'data: {"choices": []}\n\ndata: ' + error + b"\n\n")
        await response.write_eof()
        return response

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", chat)
    log = tmp_path / "audit" / "plant-7.jsonl"
    async with serving(upstream) as upstream_url, aiohttp.ClientSession() as http:
        settings = chat_forwarding_settings(
            upstream_url, audit={"path": log.parent, "fsync": "never"}, site={"id": "plant-7"}
        )
        with RouterThread(settings) as router:
            for _ in range(2):
                body = {"model": "gpt-test", "stream": True, "messages": []}
                async with asyncio.timeout(10):
                    async with http.post(router.url + "/v1/chat/completions", json=body) as resp:
                        assert b'"error"' in await resp.read()
    entries = list(map(orjson.loads, log.read_bytes().split()))
    assert [(e["status"], e["reasons"]) for e in entries] == [
        (200, ["forward:central", "stream_error:upstream_stream_broken"]),
        (200, ["forward:central", "stream_error:upstream_error"]),
    ]


async def test_a_value_a_router_in_front_found_is_counted_once(tmp_path: Path) -> None:
    """Behind an edge, the e-mail arrives as the edge's pseudonym, named in X-Layer-Router-Found
    too: found again here, it is one e-mail in the record, not two."""
    fake = FakeUpstream(name="central", models=["gpt-test"])
    log = tmp_path / "audit" / "plant-7.jsonl"
    async with serving(fake.app()) as upstream_url, aiohttp.ClientSession() as http:
        settings = chat_forwarding_settings(
            upstream_url, audit={"path": log.parent, "fsync": "never"}, site={"id": "plant-7"}
        )
        with RouterThread(settings) as router:
            body = {
                "model": "gpt-test",
                "messages": [{"role": "user", "content": "mail <EMAIL#kdpfaoijcmbe> today"}],
            }
            headers = {"X-Layer-Router-Found": "EMAIL"}
            async with asyncio.timeout(10):
                url = router.url + "/v1/chat/completions"
                async with http.post(url, json=body, headers=headers) as resp:
                    assert resp.status == 200
    (entry,) = map(orjson.loads, log.read_bytes().split())
    assert (entry["entities"], entry["redactions"]) == ({"EMAIL": 1}, {"EMAIL": 1})


def sealed_log(path: Path, ages_s: list[float]) -> list[str]:
    """A log a killed process left: one answer's record per age (seconds before now, oldest
    first); their audit ids."""
    ids = []
    with AuditLog(path) as log:
        now_ms = int(time.time() * 1000)
        for age in ages_s:
            audit_id = new_audit_id(now_ms - int(age * 1000))
            log.append_sync(
                AuditRecord(
                    id=audit_id, site="edge-local", tier="edge", api="kserve-v2", status=200
                )
            )
            ids.append(audit_id)
    return ids


async def test_copies_a_killed_process_did_not_spool_are_made_at_start(tmp_path: Path) -> None:
    """Records written just before a kill -9 whose spool copies were never committed are copied
    again when the site starts (the spool keeps one per key); older ones are not sent twice."""
    audit = tmp_path / "audit"
    audit.mkdir()
    ids = sealed_log(audit / "edge-local.jsonl", [60.0, 1.5, 1.0, 0.0])
    spool_path = tmp_path / "spool.sqlite3"
    with Spool.open_sync(spool_path) as spool:  # one copy made in time, before the kill
        spool.put_sync("audit", b"{}", key=f"audit:{ids[2]}")
    settings = Settings.model_validate(
        {"audit": {"path": audit}, "spool": {"path": spool_path}, "cache": {"enabled": False}}
    )
    app = build_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    await server.close()
    with Spool.open_sync(spool_path) as spool:
        keys = [record.key for record in spool.take_batch_sync(100)]
        assert spool.counts_sync().produced == 3
    assert sorted(keys) == sorted(f"audit:{i}" for i in ids[1:])


async def test_after_a_clean_stop_nothing_is_copied_again(tmp_path: Path) -> None:
    """A clean stop commits every copy and marks the log; the next start makes no copy again
    (only a run that died unmarked has its last moments copied twice)."""
    audit = tmp_path / "audit"
    audit.mkdir()
    ids = sealed_log(audit / "edge-local.jsonl", [1.5, 1.0, 0.0])
    spool_path = tmp_path / "spool.sqlite3"
    settings = Settings.model_validate(
        {"audit": {"path": audit}, "spool": {"path": spool_path}, "cache": {"enabled": False}}
    )
    delivered: list[str] = []
    for _ in range(2):  # the first start follows a "crash": no mark yet
        server = TestServer(build_app(settings), host="127.0.0.1")
        await server.start_server()
        await server.close()
        with Spool.open_sync(spool_path) as spool:  # uploaded: gone from the spool
            batch = spool.take_batch_sync(100)
            spool.ack_sync([record.id for record in batch])
        delivered += [record.key for record in batch]
    assert sorted(delivered) == sorted(f"audit:{i}" for i in ids)  # each once, not twice
    assert (audit / "edge-local.jsonl.copied").is_file()


async def test_a_second_router_on_the_same_state_dir_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A second single-process router on the same audit folder takes the next file (the
    first one is locked) and says so, naming both files: a mistake that splits the trail."""
    settings = Settings.model_validate({"audit": {"path": tmp_path}, "cache": {"enabled": False}})
    first = TestServer(build_app(settings), host="127.0.0.1")
    second = TestServer(build_app(settings), host="127.0.0.1")
    await first.start_server()
    try:
        with caplog.at_level(logging.WARNING, logger="router.stores"):
            await second.start_server()
        await second.close()
    finally:
        await first.close()
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "router.stores"]
    assert "edge-local.jsonl is held by another process" in warning
    assert "edge-local.1.jsonl" in warning


async def test_escalated_answer_names_the_model_that_answered(tmp_path: Path) -> None:
    """An answer escalated to the bigger model upstream is recorded under that model, not the
    small local one whose answer was set aside."""
    big = FakeUpstream(name="central", models=(), v2_models=("color_classifier_large",))
    upstream = TestServer(big.app(), host="127.0.0.1")
    await upstream.start_server()
    audit = tmp_path / "audit"
    escalate = {"to_model": "color_classifier_large", "threshold": 0.99}
    settings = Settings.model_validate(
        {
            "site": {"id": "plant-8"},
            "models": {"repository": EDGE_MODELS, "inference_threads": 1},
            "audit": {"path": audit, "fsync": "always"},
            "routing": {"models": {"color_classifier": {"escalate": escalate}}},
            "upstreams": [
                {
                    "name": "central",
                    "tier": "central",
                    "models": ["color_classifier_large"],
                    "endpoints": [{"url": str(upstream.make_url("")).rstrip("/")}],
                    "health_check": {"enabled": False},
                }
            ],
        }
    )
    router = TestServer(build_app(settings), host="127.0.0.1")
    await router.start_server()
    red = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, 0]}]}
    try:
        async with aiohttp.ClientSession() as http:
            url = str(router.make_url("/v2/models/color_classifier/infer"))
            async with asyncio.timeout(10), http.post(url, json=red) as response:
                await response.read()
                reasons = response.headers["X-Route-Reason"]
                audit_id = response.headers["X-Audit-Id"]
    finally:
        await router.close()
        await upstream.close()
    assert reasons == "local,escalated_low_confidence:central"
    (record,) = show(audit, audit_id).records
    assert record.entry["model"] == "color_classifier_large"
    assert record.entry["served_tier"] == "central"
    assert record.entry["model_sha256"] == ""
