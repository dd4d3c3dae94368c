"""The OpenAPI description of the HTTP API (issue 6 item 10) and TESTING.md row S2: schemathesis
fuzzes the router, running with a fake upstream, from its own `/openapi.json`: no 5xx, no
answer outside the document, every schema-violating request answered 4xx."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.api.openapi import load_spec
from router.settings import Settings
from router.testing import AppThread, Behaviour, FakeUpstream, RouterThread

ST = Path(sys.executable).with_name("st")
# Every check but positive_data_acceptance: a request the schema allows can still be refused
# for what a schema cannot say (tensor data that does not fit its shape and datatype, a model
# that is not there), and that refusal is a 4xx by design.
EXCLUDED_CHECKS = "positive_data_acceptance"
# Requests name real models most of the time, so the fuzzing reaches the models and the
# upstream instead of stopping at 404. The budget is fixed: a client budget below any target's
# latency is answered 504 budget_unmeetable by design (issue 3), which is not a router fault.
CONFIG = """
[dictionaries.models]
values = ["color_classifier", "hotspot_detector", "gpt-test"]
[dictionaries.versions]
values = ["1", "2"]
[dictionaries.llms]
values = ["gpt-test"]
[parameters]
"path.model" = { dictionary = "models", probability = 0.8 }
"path.version" = { dictionary = "versions", probability = 0.8 }
"body.model" = { dictionary = "llms", probability = 0.8 }
"header.X-Latency-Budget-Ms" = "30000"
"""
EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def router(edge_models: Path) -> Iterator[RouterThread]:
    """An edge router with the demo models and a regional fake LLM that answers anything."""
    llm = FakeUpstream(name="llm", behaviour=Behaviour(reply_text="ok"))
    with AppThread(llm.app) as fake:
        settings = Settings.model_validate(
            {
                "models": {"repository": edge_models, "inference_threads": 1},
                "upstreams": [
                    {
                        "name": "llm",
                        "tier": "regional",
                        "protocols": ["openai"],
                        "endpoints": [{"url": fake.url}],
                        "models": ["gpt-test"],
                        "health_check": {"enabled": False},
                    }
                ],
            }
        )
        with RouterThread(settings) as server:
            yield server


def test_every_route_is_described(router: RouterThread) -> None:
    """Each route the API app serves appears in the document, and nothing else does."""
    assert router.app is not None
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in router.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    served.discard(("post", "/v1/spool/batches"))  # the central tier's collector, site to site
    spec = load_spec()
    described = {
        (method, path)
        for path, item in spec["paths"].items()  # type: ignore[attr-defined]
        for method in item
        if method in ("get", "post")
    }
    assert served == described


def test_served_document_is_the_package_one(router: RouterThread) -> None:
    """GET /openapi.json answers the packaged document with the router's version."""
    doc = httpx.get(router.url + "/openapi.json", timeout=10).json()
    assert doc == load_spec()


def test_schemathesis_finds_nothing(router: RouterThread, tmp_path: Path) -> None:
    """S2: bounded schemathesis run (examples per operation, fixed seed) passes every check."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        str(ST),
        "--no-color",
        "--config-file",
        str(config),
        "run",
        router.url + "/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        EXCLUDED_CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        "1",
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout


class TestFoundByFuzzing:
    """Regressions for what the contract run found."""

    def test_405_names_the_allowed_methods(self, router: RouterThread) -> None:
        """A method a route does not take answers 405 with an Allow header (RFC 9110)."""
        answer = httpx.delete(router.url + "/v2/health/live", timeout=10)
        assert answer.status_code == 405
        assert "GET" in answer.headers["Allow"]

    @pytest.mark.parametrize("body", [b'{"ready": {}}', b" ", b'{"ready": "yes"}'])
    def test_repository_index_rejects_bad_options(self, router: RouterThread, body: bytes) -> None:
        """A non-boolean `ready` or a blank (non-JSON) body is a 400, not the whole index."""
        answer = httpx.post(router.url + "/v2/repository/index", content=body, timeout=10)
        assert answer.status_code == 400

    def test_non_ascii_digit_header_length(self, router: RouterThread) -> None:
        """A header length of '²' (a digit to str.isdigit, not to int) is a 400, not a 500."""
        url = router.url + "/v2/models/color_classifier/infer"
        headers = {"Inference-Header-Content-Length": "²".encode()}
        answer = httpx.post(url, content=b"{}", headers=headers, timeout=10)
        assert answer.status_code == 400


PROBES = {"/v2/health/live", "/v2/health/ready"}
RATE_LIMITED = {"modelInfer", "modelVersionInfer", "createChatCompletion", "createCompletion"}


def operations() -> Iterator[tuple[str, dict[str, object]]]:
    for path, item in load_spec()["paths"].items():  # type: ignore[attr-defined]
        for method in ("get", "post"):
            if method in item:
                yield path, item[method]


def test_api_keys_and_their_refusals_are_described() -> None:
    """The key headers the router reads are security schemes; every route but the probes
    may answer 401, and the rate-limited ones 429 (a generated client must expect both)."""
    spec = load_spec()
    schemes = spec["components"]["securitySchemes"]  # type: ignore[index]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert {s.get("name") for s in schemes.values()} >= {"api-key", "X-Api-Key"}
    assert {} in spec["security"]  # type: ignore[operator]  # auth may be disabled
    for path, operation in operations():
        responses = operation["responses"]
        assert (path in PROBES) == ("401" not in responses), path  # type: ignore[operator]
        if operation["operationId"] in RATE_LIMITED:
            assert "429" in responses, path  # type: ignore[operator]
        if path in PROBES:
            assert operation["security"] == []
