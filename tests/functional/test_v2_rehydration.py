"""Tokens restored in KServe v2 answers forwarded to central (issue 4): the real `tritonclient`
asks for binary outputs by default, so a BYTES output comes back in the binary part, where the
tokens must be restored too (and the header length follow). Real routers on 127.0.0.1: an edge
and a central one running an identity BYTES model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from router import forwarding
from router.app import build_app
from router.settings import Settings
from router.stages.classify import OFF_LOOP_BYTES
from router.testing import AppThread, identity_model, write_repository

TIMEOUT_S = 20.0
EMAIL = "v2.canary.77aa@example.com"
CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The edge's host:port; central behind it serves `echo_bytes` (an identity model)."""
    repository = write_repository(
        tmp_path_factory.mktemp("central"), {"echo_bytes": {1: identity_model("BYTES")}}
    )
    central_settings = Settings.model_validate(
        {
            "site": {"id": "hq", "tier": "central"},
            "models": {"repository": repository, "inference_threads": 1},
            "cache": {"enabled": False},
        }
    )
    with AppThread(lambda: build_app(central_settings)) as central:
        edge_settings = Settings.model_validate(
            {
                "site": {"id": "plant", "tier": "edge"},
                "models": {"repository": tmp_path_factory.mktemp("edge"), "inference_threads": 1},
                "cache": {"enabled": False},
                "upstreams": [
                    {
                        "name": "central",
                        "tier": "central",
                        "endpoints": [{"url": central.url}],
                        "models": ["echo_bytes"],
                        "health_check": {"enabled": False},
                    }
                ],
            }
        )
        with AppThread(lambda: build_app(edge_settings)) as site:
            yield site.host_port


def _infer(host_port: str, binary_output: bool) -> np.ndarray:
    values = np.array([[f"mail {EMAIL}".encode()], [f"card {CARD}, {EMAIL}".encode()]], object)
    tensor = triton.InferInput("INPUT0", [2, 1], "BYTES")
    tensor.set_data_from_numpy(values, binary_data=False)
    output = triton.InferRequestedOutput("OUTPUT0", binary_data=binary_output)
    client = triton.InferenceServerClient(
        host_port, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S
    )
    try:
        result = client.infer("echo_bytes", [tensor], outputs=[output])
        assert result.get_response()["outputs"][0]["name"] == "OUTPUT0"
        return np.asarray(result.as_numpy("OUTPUT0"))
    finally:
        client.close()


@pytest.mark.parametrize("binary_output", [True, False])
def test_bytes_output_restored(edge: str, binary_output: bool) -> None:
    """Central saw tokens; the caller gets its own values back, binary output or JSON."""
    out = [
        [v.decode() if isinstance(v, bytes) else v for v in row]
        for row in _infer(edge, binary_output).tolist()
    ]
    assert out == [[f"mail {EMAIL}"], [f"card {CARD}, {EMAIL}"]]


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# Few, long rows: over OFF_LOOP_BYTES with one e-mail a row, so detection stays well inside
# the default bundle's CPU deadline on a loaded machine (1,500 short rows did not, now and then).
@pytest.mark.parametrize(("rows", "off_loop"), [(2, False), (100, True)])
def test_a_large_answer_is_restored_off_the_event_loop(
    edge: str, monkeypatch: pytest.MonkeyPatch, rows: int, off_loop: bool
) -> None:
    """An answer over OFF_LOOP_BYTES has its tokens restored on a worker thread (the walk
    over it is CPU work), a small one on the loop; both get the caller's values back."""
    seen: list[bool] = []
    real = forwarding._rehydrated

    def watched(*args: Any) -> bytes:
        seen.append(_on_loop())
        return real(*args)

    monkeypatch.setattr(forwarding, "_rehydrated", watched)
    texts = [f"row {n} mail {EMAIL} " + "lorem ipsum " * 30 for n in range(rows)]
    tensor = triton.InferInput("INPUT0", [rows, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], object), binary_data=False)
    output = triton.InferRequestedOutput("OUTPUT0", binary_data=False)
    client = triton.InferenceServerClient(
        edge, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S
    )
    try:
        result = client.infer("echo_bytes", [tensor], outputs=[output])
        out = [
            v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("OUTPUT0").ravel()
        ]
    finally:
        client.close()
    assert out == texts
    assert seen == [not off_loop]
    assert (sum(map(len, texts)) > OFF_LOOP_BYTES) is off_loop  # the answer holds them all
