"""Tenants on a real router (TESTING.md S11): API keys resolve to tenants, tenants never see
each other's cached answers, and 401/403/429 answer exactly as specified, on both faces."""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from router.api.admin import status_document
from router.api.state import BUNDLE, RELOADER
from router.resources import default_policy_bundle
from router.settings import Settings
from router.tenancy import hash_key
from router.testing import AppThread, FakeUpstream, RouterThread, chat_forwarding_settings

EDGE_MODELS = Path(__file__).resolve().parents[2] / "edge_models"
TIMEOUT = aiohttp.ClientTimeout(total=30)
KEY_A = "lr-alpha-canary-key-0123456789abcdefghij"
KEY_B = "lr-beta-canary-key-0123456789abcdefghijk"
KEY_C = "lr-gamma-canary-key-0123456789abcdefghij"
KEY_D = "lr-delta-canary-key-0123456789abcdefghij"
CLASSIFY = "/v2/models/color_classifier/infer"
HOTSPOT = "/v2/models/hotspot_detector/infer"
CHAT = "/v1/chat/completions"
TENANTS = f"""
default:
  data_class: internal
tenants:
  alpha:
    keys: ["{hash_key(KEY_A)}"]
  beta:
    keys: ["{hash_key(KEY_B)}"]
    models: ["color_*", "gpt-*"]
  gamma:
    keys: ["{hash_key(KEY_C)}"]
    models: ["color_classifier"]
  delta:
    keys: ["{hash_key(KEY_D)}"]
    data_class: public
    rate_limits:
      - {{requests: 3, period_s: 3600}}
"""


def rgb(values: list[float]) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "rgb", "datatype": "FP32", "shape": [1, 3], "data": values}]}
    )


def chat(text: str) -> bytes:
    return orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": text}]})


def bundle(root: Path, tenants: str = TENANTS) -> Path:
    folder = root / "bundle"
    shutil.copytree(default_policy_bundle(), folder)
    (folder / "tenants.yaml").write_text(tenants, encoding="utf-8")
    return folder


def settings(root: Path, upstream_url: str, auth: str) -> Settings:
    return chat_forwarding_settings(
        upstream_url,
        models={"repository": str(EDGE_MODELS), "inference_threads": 1},
        policy={"bundle": str(bundle(root))},
        cache={"enabled": True, "openai_ttl_s": 300},
        audit={"path": str(root / "audit"), "fsync": "always"},
        auth={"mode": auth},
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream("central")
    with AppThread(fake.app) as server:
        yield fake, server.url


@pytest.fixture(scope="module")
def router(
    tmp_path_factory: pytest.TempPathFactory, upstream: tuple[FakeUpstream, str]
) -> Iterator[RouterThread]:
    root = tmp_path_factory.mktemp("tenants")
    with RouterThread(settings(root, upstream[1], "required")) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


async def send(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    method = "POST" if body is not None else "GET"
    async with http.request(method, url, data=body, headers=headers) as response:
        raw = await response.read()
        return response.status, response.headers, orjson.loads(raw) if raw else None


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


class TestCacheIsolation:
    async def test_no_tenant_ever_gets_another_tenants_cached_answer(
        self, http: aiohttp.ClientSession, router: RouterThread
    ) -> None:
        """Identical requests from two tenants: each tenant's first is a MISS, its second a HIT;
        over 20 inputs on the v2 face, not one answer crosses between tenants. The keys ride in
        api-key / X-Api-Key, so no Authorization header tells the requests apart: only the
        tenant does."""
        cross = 0
        for i in range(20):
            body = rgb([i / 20, 0.5, 1 - i / 20])
            for headers in ({"api-key": KEY_A}, {"X-Api-Key": KEY_B}):
                status, got, _ = await send(http, router.url + CLASSIFY, body, headers)
                assert status == 200
                cross += got["X-Cache"] != "MISS"
                status, got, _ = await send(http, router.url + CLASSIFY, body, headers)
                assert (status, got["X-Cache"]) == (200, "HIT")
        assert cross == 0

    async def test_openai_answers_are_cached_per_tenant(
        self, http: aiohttp.ClientSession, router: RouterThread, upstream: tuple[FakeUpstream, str]
    ) -> None:
        """A chat answer one tenant caused is never replayed to another: the upstream is
        asked once per tenant."""
        fake = upstream[0]
        before = len(fake.requests_to(CHAT))
        seen = []
        for key in (KEY_A, KEY_B, KEY_A, KEY_B):
            status, headers, _ = await send(
                http, router.url + CHAT, chat("isolate"), {"api-key": key}
            )
            assert status == 200
            seen.append(headers["X-Cache"])
        assert seen == ["MISS", "MISS", "HIT", "HIT"]
        assert len(fake.requests_to(CHAT)) - before == 2


class TestAuthentication:
    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            ("POST", CLASSIFY, rgb([0.1, 0.2, 0.3])),
            ("POST", CHAT, chat("hello")),
            ("GET", "/v2/models/color_classifier", None),
            ("GET", "/v1/models", None),
            ("GET", "/v2", None),
        ],
    )
    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": "Bearer lr-not-a-key-of-anyone-0123456789"},
            {"Authorization": f"Basic {KEY_A}"},
            {"Authorization": "Bearer"},
            {"api-key": "lr-not-a-key-of-anyone-0123456789"},
        ],
        ids=["none", "unknown", "not-bearer", "empty-bearer", "unknown-api-key"],
    )
    async def test_without_a_valid_key_every_api_route_is_401(
        self,
        http: aiohttp.ClientSession,
        router: RouterThread,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> None:
        """401 with a Bearer challenge and the protocol's error shape, naming no key."""
        status, got, doc = await send(http, router.url + path, body, headers)
        assert status == 401
        assert got["WWW-Authenticate"].startswith("Bearer")
        text = orjson.dumps(doc).decode()
        assert "lr-not-a-key" not in text
        assert KEY_A not in text
        if path.startswith("/v1/"):
            assert doc["error"]["code"] == "unauthorized"

    @pytest.mark.parametrize("header", ["Authorization", "api-key", "X-Api-Key"])
    async def test_each_key_header_is_accepted(
        self, http: aiohttp.ClientSession, router: RouterThread, header: str
    ) -> None:
        """A key is read from `Authorization: Bearer`, `api-key` or `X-Api-Key`."""
        value = f"Bearer {KEY_A}" if header == "Authorization" else KEY_A
        status, _, _ = await send(
            http, router.url + CLASSIFY, rgb([0.3, 0.3, 0.3]), {header: value}
        )
        assert status == 200

    async def test_probes_need_no_key(
        self, http: aiohttp.ClientSession, router: RouterThread
    ) -> None:
        """Liveness and readiness answer without a key (orchestrators carry none)."""
        for path in ("/v2/health/live", "/v2/health/ready"):
            status, _, _ = await send(http, router.url + path)
            assert status == 200

    async def test_keys_never_reach_the_upstream(
        self, http: aiohttp.ClientSession, router: RouterThread, upstream: tuple[FakeUpstream, str]
    ) -> None:
        """A tenant's key authenticates to this router only: no header carries it upstream."""
        fake = upstream[0]
        for header in ("Authorization", "api-key", "X-Api-Key"):
            value = f"Bearer {KEY_B}" if header == "Authorization" else KEY_B
            status, _, _ = await send(
                http, router.url + CHAT, chat(f"via {header}"), {header: value}
            )
            assert status == 200
        for recorded in fake.requests_to(CHAT):
            assert all(KEY_B not in v and KEY_A not in v for v in recorded.headers.values())


class TestAuthorization:
    @pytest.mark.parametrize(
        ("key", "path", "body"),
        [
            (KEY_B, HOTSPOT, rgb([0.1, 0.2, 0.3])),
            (KEY_C, CHAT, chat("not yours")),
            (KEY_C, "/v2/models/hotspot_detector/versions/1/infer", rgb([0.1, 0.2, 0.3])),
        ],
    )
    async def test_a_model_outside_the_tenants_list_is_403(
        self, http: aiohttp.ClientSession, router: RouterThread, key: str, path: str, body: bytes
    ) -> None:
        """403 model_not_allowed, whatever the face, before the model runs or is forwarded."""
        status, _, doc = await send(http, router.url + path, body, bearer(key))
        assert status == 403
        if path.startswith("/v1/"):
            assert doc["error"]["code"] == "model_not_allowed"
        else:
            assert "not available to this tenant" in doc["error"]

    async def test_metadata_and_model_lists_follow_the_tenants_models(
        self, http: aiohttp.ClientSession, router: RouterThread
    ) -> None:
        """A tenant limited to some models sees only those in GET /v1/models and gets 403 for
        another model's metadata; an unlimited tenant sees every model."""
        status, _, doc = await send(http, router.url + "/v1/models", None, bearer(KEY_B))
        assert status == 200
        assert {m["id"] for m in doc["data"]} == {"color_classifier", "gpt-test"}
        status, _, doc = await send(http, router.url + "/v1/models", None, bearer(KEY_A))
        assert {"hotspot_detector", "color_classifier", "gpt-test"} <= {
            m["id"] for m in doc["data"]
        }
        for path in ("/v2/models/hotspot_detector", "/v2/models/hotspot_detector/ready"):
            status, _, _ = await send(http, router.url + path, None, bearer(KEY_B))
            assert status == 403
        status, _, _ = await send(
            http, router.url + "/v2/models/color_classifier", None, bearer(KEY_B)
        )
        assert status == 200

    async def test_server_metadata_index_and_stats_list_only_the_tenants_models(
        self, http: aiohttp.ClientSession, router: RouterThread
    ) -> None:
        """GET /v2, the repository index and /v2/models/stats name only the models the tenant
        may use (their names, hashes and traffic are other tenants' business); an unlimited
        tenant still sees every one."""
        status, _, doc = await send(http, router.url + "/v2", None, bearer(KEY_C))
        assert status == 200
        assert {m["name"] for m in doc["models"]} == {"color_classifier"}
        status, _, doc = await send(http, router.url + "/v2/repository/index", b"", bearer(KEY_C))
        assert status == 200
        assert {item["name"] for item in doc} == {"color_classifier"}
        status, _, doc = await send(http, router.url + "/v2/models/stats", None, bearer(KEY_C))
        assert status == 200
        assert {item["name"] for item in doc["model_stats"]} == {"color_classifier"}
        status, _, doc = await send(http, router.url + "/v2/repository/index", b"", bearer(KEY_A))
        assert {"color_classifier", "hotspot_detector", "gpt-test"} <= {i["name"] for i in doc}


class TestRateLimits:
    async def test_bucket_empties_then_429_with_openai_headers(
        self, http: aiohttp.ClientSession, router: RouterThread
    ) -> None:
        """Three requests an hour: remaining counts 2, 1, 0, then 429 with Retry-After and the
        x-ratelimit-* headers; the refused request takes no token."""
        remaining = []
        for i in range(3):
            body = rgb([0.7, 0.1, i / 10])
            status, headers, _ = await send(http, router.url + CLASSIFY, body, bearer(KEY_D))
            assert status == 200
            assert headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(headers["x-ratelimit-remaining-requests"])
        assert remaining == ["2", "1", "0"]
        for _ in range(2):
            status, headers, doc = await send(
                http, router.url + CLASSIFY, rgb([0.7, 0.1, 0.9]), bearer(KEY_D)
            )
            assert status == 429
            assert 1000 <= int(headers["Retry-After"]) <= 1200  # one token: 20 minutes
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert headers["x-ratelimit-reset-requests"].endswith("s")
            assert "rate limit" in doc["error"]
        # As the README says, only inference takes a token: metadata and lists still answer.
        for path in ("/v2", "/v2/models/color_classifier", "/v1/models", "/v2/models/stats"):
            async with http.get(router.url + path, headers=bearer(KEY_D)) as response:
                assert response.status == 200, path
                assert "x-ratelimit-remaining-requests" not in response.headers


async def test_auth_disabled_serves_anonymous_and_ignores_foreign_credentials(
    tmp_path: Path, upstream: tuple[FakeUpstream, str], http: aiohttp.ClientSession
) -> None:
    """auth.mode disabled: no key is the anonymous tenant, an unknown Authorization (meant for
    an upstream) is no error, and a known key still names its tenant (own cache scope)."""
    with RouterThread(settings(tmp_path, upstream[1], "disabled")) as router:
        body = rgb([0.2, 0.9, 0.2])
        status, headers, _ = await send(http, router.url + CLASSIFY, body)
        assert (status, headers["X-Cache"]) == (200, "MISS")
        foreign = {"Authorization": "Bearer sk-upstream-credential-xyz"}
        status, headers, _ = await send(http, router.url + CLASSIFY, body, foreign)
        assert status == 200
        status, headers, _ = await send(http, router.url + CLASSIFY, body, bearer(KEY_A))
        assert (status, headers["X-Cache"]) == (200, "MISS")


async def test_server_metadata_shows_no_bundle_path_error_or_drift(
    tmp_path: Path, upstream: tuple[FakeUpstream, str], http: aiohttp.ClientSession
) -> None:
    """GET /v2, which any client may read, holds no bundle source path, last load error or
    version drift: those are operator information, in the admin listener's /status only."""
    site = settings(tmp_path, upstream[1], "required")
    folder = Path(site.policy.bundle)
    (folder / "versions.yaml").write_text("tiers:\n  edge:\n    hotspot_detector: ['9']\n")
    with RouterThread(site) as router:
        assert router.app is not None
        api = router.app
        router.call(api[BUNDLE].rejected, "canary-error: /srv/secret-canary/manifest.yaml")
        for key in (KEY_A, KEY_C):
            async with http.get(router.url + "/v2", headers=bearer(key)) as resp:
                assert resp.status == 200
                raw = await resp.read()
            doc = orjson.loads(raw)
            assert {"name", "version", "extensions"} <= doc.keys()
            assert "bundle" not in doc
            assert str(folder).encode() not in raw
            assert b"secret-canary" not in raw
            assert b"drift" not in raw
        policy = router.call_async(status_document, api)["policy"]
        assert policy["source"] == str(folder)
        assert "secret-canary" in policy["last_error"]
        assert [item["model"] for item in policy["drift"]] == ["hotspot_detector"]


async def test_a_tenants_key_never_goes_upstream_where_client_credentials_do(
    tmp_path: Path, upstream: tuple[FakeUpstream, str], http: aiohttp.ClientSession
) -> None:
    """A cluster with forward_authorization passes on the client's credentials for the
    upstream, never the key that named a tenant here: with the tenant's key in api-key
    beside an upstream key in Authorization, the tenant is named and only the upstream key
    travels; with the tenant's key in Authorization, no Authorization travels at all."""
    fake = upstream[0]
    site = settings(tmp_path, upstream[1], "required")
    cluster = site.upstreams[0].model_copy(update={"forward_authorization": True})
    site = site.model_copy(update={"upstreams": (cluster,)})
    upstream_key = "sk-upstream-credential-0123456789"
    with RouterThread(site) as router:
        before = len(fake.requests_to(CHAT))
        both = {"Authorization": f"Bearer {upstream_key}", "api-key": KEY_A}
        status, _, _ = await send(http, router.url + CHAT, chat("both keys"), both)
        assert status == 200
        status, _, _ = await send(http, router.url + CHAT, chat("tenant key only"), bearer(KEY_A))
        assert status == 200
        first, second = fake.requests_to(CHAT)[before:]
    assert first.headers.get("Authorization") == f"Bearer {upstream_key}"
    assert "Authorization" not in second.headers
    for recorded in (first, second):
        assert all(KEY_A not in value for value in recorded.headers.values())


async def test_audit_names_the_tenant_never_the_key(
    tmp_path: Path,
    upstream: tuple[FakeUpstream, str],
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Audit records carry the tenant's name and start from its data class; neither a key nor
    its hash is anywhere in them or in DEBUG logs, and a refused request is recorded without a
    tenant."""
    caplog.set_level(logging.DEBUG)
    wrong = "lr-wrong-canary-key-0123456789abcdefghij"
    with RouterThread(settings(tmp_path, upstream[1], "required")) as router:
        for key in (KEY_A, KEY_B, KEY_D):
            status, _, _ = await send(
                http, router.url + CLASSIFY, rgb([0.4, 0.4, 0.4]), bearer(key)
            )
            assert status == 200
        status, _, _ = await send(http, router.url + CLASSIFY, rgb([0.4, 0.4, 0.4]))
        assert status == 401
        status, _, _ = await send(http, router.url + CHAT, chat("x"), {"api-key": wrong})
        assert status == 401
    text = "".join(p.read_text() for p in (tmp_path / "audit").glob("*.jsonl"))
    records = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    answers = [(r["tenant"], r["data_class"]) for r in records if r.get("kind") == "response"]
    assert answers == [
        ("alpha", "internal"),
        ("beta", "internal"),
        ("delta", "public"),
        ("", ""),
        ("", ""),
    ]
    for secret in (KEY_A, KEY_B, KEY_D, wrong, hash_key(KEY_A)[7:], hash_key(KEY_D)[7:]):
        assert secret not in text
        assert secret not in caplog.text


async def test_a_reloaded_bundle_without_keys_is_refused_under_required_auth(
    tmp_path: Path, upstream: tuple[FakeUpstream, str], http: aiohttp.ClientSession
) -> None:
    """Start-up refuses a bundle with no key under auth.mode required; a reload refuses it
    too (it locked every tenant out with 401): the old bundle and its keys stay, and /status
    says why."""
    site = settings(tmp_path, upstream[1], "required")
    folder = Path(site.policy.bundle)
    with RouterThread(site) as router:
        api = router.app
        assert api is not None
        before = router.call_async(status_document, api)["policy"]["revision"]
        (folder / "tenants.yaml").write_text("default: {data_class: internal}\ntenants: {}\n")
        manifest = (folder / "manifest.yaml").read_text()
        (folder / "manifest.yaml").write_text(manifest.replace(before, "keyless"))
        router.call_async(api[RELOADER].reload, "test")
        status, headers, _ = await send(http, router.url + CLASSIFY, rgb([0.3] * 3), bearer(KEY_A))
        assert status == 200
        assert headers["X-Policy-Revision"] == before
        policy = router.call_async(status_document, api)["policy"]
        assert policy["revision"] == before
        assert "no tenant has a key" in policy["last_error"]
        assert policy["rejections"] == 1


async def test_refusals_by_the_tenants_policy_name_its_revision(
    tmp_path: Path, upstream: tuple[FakeUpstream, str], http: aiohttp.ClientSession
) -> None:
    """A 403 (the model is outside the tenant's list) and a 429 (its bucket is empty) are
    decisions of the bundle's tenants.yaml: the answer carries X-Policy-Revision and the audit
    record names the revision, as any other answer's; a 401 tells a caller without a valid
    key nothing of the policy."""
    revision = "tenants-rev-7"
    site = settings(tmp_path, upstream[1], "required")
    manifest = Path(site.policy.bundle) / "manifest.yaml"
    manifest.write_text(f"name: t\nrevision: {revision}\n")
    with RouterThread(site) as router:
        for _ in range(3):  # delta's bucket holds three
            await send(http, router.url + CLASSIFY, rgb([0.1, 0.2, 0.3]), bearer(KEY_D))
        refusals = [
            (CLASSIFY, bearer("lr-unknown-canary-key-0123456789abcdef")),
            (HOTSPOT, bearer(KEY_C)),
            (CLASSIFY, bearer(KEY_D)),
        ]
        shown = []
        for path, headers in refusals:
            status, got, _ = await send(http, router.url + path, rgb([0.1, 0.2, 0.3]), headers)
            shown.append((status, got.get("X-Policy-Revision")))
    assert shown == [(401, None), (403, revision), (429, revision)]
    text = "".join(p.read_text() for p in (tmp_path / "audit").glob("*.jsonl"))
    records = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    refused = [r for r in records if r.get("kind") == "response" and r["status"] >= 400]
    assert [(r["status"], r["policy_revision"]) for r in refused] == [
        (401, ""),
        (403, revision),
        (429, revision),
    ]
