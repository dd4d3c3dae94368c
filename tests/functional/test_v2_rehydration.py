"""Tokens restored in KServe v2 answers forwarded to central (issue 4): the real `tritonclient`
asks for binary outputs by default, so a BYTES output comes back in the binary part, where the
tokens must be restored too (and the header length follow). Real routers on 127.0.0.1: an edge
and a central one running an identity BYTES model."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as triton

from router.app import build_app
from router.settings import Settings
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
