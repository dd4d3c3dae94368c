"""A bundle's data classes may be named in any case (`PII`, `Secret`): the X-Data-Class header
and a previous router's declared class name them case-insensitively, in the bundle's spelling."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from router.resources import default_policy_bundle
from router.testing import AppThread, FakeUpstream, RouterThread, chat_forwarding_settings

CHAT = "/v1/chat/completions"
BODY = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})


def bundle(root: Path) -> Path:
    """Four classes in capitals; the strictest, Secret, may not leave the site."""
    folder = root / "bundle"
    shutil.copytree(default_policy_bundle(), folder)
    shutil.rmtree(folder / "cases")
    (folder / "data_classes.yaml").write_text(
        "classes: [Public, Internal, PII, Secret]\ndefault: Internal\nentities: {EMAIL: PII}\n"
    )
    (folder / "residency.yaml").write_text(
        "rules:\n  - {data_class: [Public, Internal, PII], jurisdictions: [any]}\n"
    )
    (folder / "tenants.yaml").write_text("default: {data_class: Internal}\n")
    (folder / "cache.yaml").write_text("max_data_class: Internal\n")
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("class-names")
    with AppThread(FakeUpstream("central").app) as upstream:
        settings = chat_forwarding_settings(upstream.url, policy={"bundle": str(bundle(root))})
        with RouterThread(settings) as router:
            yield router.url


@pytest.mark.parametrize(
    ("header", "value", "status"),
    [
        ("X-Data-Class", "PII", 200),
        ("X-Data-Class", "pii", 200),
        ("X-Data-Class", "secret", 403),
        ("X-Layer-Router-Declared-Class", "PII", 200),
        ("X-Layer-Router-Declared-Class", "Secret", 403),
    ],
)
def test_class_headers_match_the_bundle_in_any_case(
    site: str, header: str, value: str, status: int
) -> None:
    """PII may leave the site and Secret may not, however the header spells the name: they
    were a 400 (X-Data-Class) or read as the strictest class (a previous router's PII)."""
    headers = {header: value, "Content-Type": "application/json"}
    response = httpx.post(site + CHAT, content=BODY, headers=headers, timeout=20)
    assert response.status_code == status, response.text
