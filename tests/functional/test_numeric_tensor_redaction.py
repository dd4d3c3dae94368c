"""A KServe v2 numeric tensor holding a value the target tier's policy redacts is refused at the
edge (422 numeric_tensor_redaction) before anything is sent: a token, mask, pseudonym or ""
in an INT64 or FP64 tensor is no number, and a strict v2 server answers 400 to it (or a lax one
coerces it). The real router, recording FakeUpstreams and the real tritonclient; a BYTES
tensor with the same value is still tokenized and forwarded, a local model still sees the
value, and a later tier whose policy lets the value through still serves the request."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from router.audit import show
from router.resources import default_policy_bundle
from router.settings import Settings
from router.testing import FakeUpstream, Recorded, RouterThread, identity_model, serving
from router.testing import write_repository as write_models

CARD = 4111111111111111
CANARY = 4556737586899855  # Luhn-valid, used only by the canary test
LIMIT_S = 10.0


def cluster(name: str, tier: str, url: str, models: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "tier": tier,
        "endpoints": [{"url": url, "jurisdiction": "EU"}],
        "models": models,
        "health_check": {"enabled": False},
        "outlier": {"consecutive_failures": 1000},
        "retry": {"base_backoff_ms": 1, "max_backoff_ms": 2},
    }


@dataclass
class Site:
    router: RouterThread
    fakes: dict[str, FakeUpstream]
    audit: Path

    @property
    def url(self) -> str:
        return self.router.url

    def off_site(self) -> list[Recorded]:
        return self.fakes["regional"].received + self.fakes["central"].received


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local INT64 identity model."""
    root = tmp_path_factory.mktemp("models")
    return write_models(root, {"echo_int64": {1: identity_model("INT64")}})


def bundle_with(tmp_path: Path, central_card: str) -> Path:
    """The default bundle with the central tier's action for CARD set to `central_card`."""
    folder = tmp_path / f"bundle-{central_card}"
    shutil.copytree(default_policy_bundle(), folder)
    redaction = folder / "redaction.yaml"
    text = redaction.read_text(encoding="utf-8")
    central = "  central:\n    default: tokenize\n    entities:\n"
    assert central in text
    redaction.write_text(text.replace(central, f"{central}      CARD: {central_card}\n"))
    if central_card == "keep":
        # Residency lets a card go unredacted only where this says it may.
        residency = folder / "residency.yaml"
        rule = (
            "data_class: sensitive\n    tiers: [edge, regional, central]\n"
            "    jurisdictions: [same]\n"
        )
        text = residency.read_text(encoding="utf-8")
        assert f"{rule}    once_redacted_to: internal\n" in text
        residency.write_text(text.replace(f"{rule}    once_redacted_to: internal\n", rule, 1))
    return folder


@contextlib.asynccontextmanager
async def site_with(
    tmp_path: Path, models: Path, bundle: Path | None = None
) -> AsyncIterator[Site]:
    """Recording fakes for a regional and a central cluster (both serve v2-both) and the
    router (with its admin listener and an audit log) in front of them."""
    fakes = {name: FakeUpstream(name=name) for name in ("regional", "central")}
    async with contextlib.AsyncExitStack() as stack:
        urls = {n: await stack.enter_async_context(serving(f.app())) for n, f in fakes.items()}
        audit = tmp_path / "audit"
        settings = Settings.model_validate(
            {
                "site": {"id": "edge-eu-1", "tier": "edge", "jurisdiction": "EU"},
                "models": {"repository": str(models), "inference_threads": 1},
                "audit": {"path": str(audit)},
                "upstreams": [
                    cluster("regional", "regional", urls["regional"], ["v2-regional", "v2-both"]),
                    cluster("central", "central", urls["central"], ["v2-central", "v2-both"]),
                ],
                "policy": {"bundle": str(bundle)} if bundle else {},
            }
        )
        router = RouterThread(settings, admin=True)
        router.start()
        try:
            yield Site(router, fakes, audit)
        finally:
            router.stop()


@pytest.fixture
async def site(tmp_path: Path, models: Path) -> AsyncIterator[Site]:
    async with site_with(tmp_path, models) as made:
        yield made


def tensor(array: np.ndarray, *, binary: bool, name: str = "ids") -> triton_http.InferInput:
    datatype = "BYTES" if array.dtype == object else triton_http.np_to_triton_dtype(array.dtype)
    made = triton_aio.InferInput(name, list(array.shape), datatype)
    made.set_data_from_numpy(array, binary_data=binary)
    return made


async def triton_infer(
    site: Site, model: str, array: np.ndarray, *, binary: bool, name: str = "ids"
) -> Any:
    """tritonclient's answer for one tensor `name`; raises InferenceServerException."""
    client = triton_aio.InferenceServerClient(site.router.host_port, conn_timeout=LIMIT_S)
    try:
        return await client.infer(model, [tensor(array, binary=binary, name=name)])
    finally:
        await client.close()


async def refusal(site: Site, model: str, array: np.ndarray, *, binary: bool) -> str:
    """The message of the 422 tritonclient gets."""
    with pytest.raises(InferenceServerException) as caught:
        await triton_infer(site, model, array, binary=binary)
    assert caught.value.status() == "422", caught.value
    return str(caught.value.message())


def digits_absent(text: str | bytes, *values: int) -> None:
    blob = text if isinstance(text, bytes) else text.encode()
    for value in values:
        assert str(value).encode() not in blob
        assert value.to_bytes(8, "little") not in blob


class TestRefusedAtTheEdge:
    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    @pytest.mark.parametrize(
        ("model", "tier"), [("v2-regional", "regional"), ("v2-central", "central")]
    )
    async def test_card_in_an_int64_tensor_is_refused_before_anything_is_sent(
        self, site: Site, model: str, tier: str, binary: bool
    ) -> None:
        """A card number in an INT64 tensor (JSON or binary) for an off-site tier: a 422
        naming the input, its datatype, the entity and the tier, never the value; no upstream
        receives anything (it used to get "<CARD_1>" in an INT64 tensor)."""
        array = np.array([[7, CARD, 491_234_567]], dtype=np.int64)
        message = await refusal(site, model, array, binary=binary)
        assert "input 'ids' (INT64) holds a CARD value" in message, message
        assert f"the {tier} tier may not receive" in message, message
        assert "send the value in a BYTES tensor" in message, message
        assert f"serve model '{model}' on this site" in message, message
        digits_absent(message, CARD)
        assert site.off_site() == []

    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    async def test_card_in_an_fp64_tensor_is_refused_too(self, site: Site, binary: bool) -> None:
        """A card number held exactly by an FP64 element is refused as the INT64 one is."""
        array = np.array([0.5, float(CARD), 1_234_567.25], dtype=np.float64)
        message = await refusal(site, "v2-central", array, binary=binary)
        assert "input 'ids' (FP64) holds a CARD value" in message, message
        digits_absent(message, CARD)
        assert site.off_site() == []

    @pytest.mark.parametrize("action", ["drop", "mask", "hash"])
    async def test_no_action_makes_a_number_so_every_one_is_refused(
        self, tmp_path: Path, models: Path, action: str
    ) -> None:
        """drop (""), mask ("************1111") and hash ("<CARD#...>") leave no number in
        the element either: refused, nothing sent."""
        async with site_with(tmp_path, models, bundle_with(tmp_path, action)) as made:
            array = np.array([CARD], dtype=np.int64)
            message = await refusal(made, "v2-central", array, binary=True)
            assert "(INT64) holds a CARD value" in message, message
            assert made.off_site() == []

    async def test_a_tier_that_keeps_the_value_gets_the_number(
        self, tmp_path: Path, models: Path
    ) -> None:
        """A tier whose policy keeps cards gets the INT64 tensor as the number it was."""
        async with site_with(tmp_path, models, bundle_with(tmp_path, "keep")) as made:
            await triton_infer(made, "v2-central", np.array([CARD], dtype=np.int64), binary=False)
            [record] = made.off_site()
            assert orjson.loads(record.body)["inputs"][0]["data"] == [CARD]


class TestUnaffected:
    @pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
    async def test_the_same_value_as_bytes_is_still_tokenized(
        self, site: Site, binary: bool
    ) -> None:
        """A BYTES tensor holding the card number goes on with "<CARD_1>" in its place, and
        the caller gets the number back, as before."""
        array = np.array([str(CARD).encode()], dtype=object)
        result = await triton_infer(site, "v2-central", array, binary=binary)
        [record] = site.off_site()
        digits_absent(record.body, CARD)
        length = record.headers.get("Inference-Header-Content-Length")
        header = orjson.loads(record.body[: int(length)] if length else record.body)
        assert header["inputs"][0]["data"] == ["<CARD_1>"]
        assert result.get_response()["outputs"] is not None

    async def test_a_local_model_sees_the_value(self, site: Site) -> None:
        """Nothing leaves the site for a local model: the card reaches it as the number."""
        array = np.array([[CARD]], dtype=np.int64)
        result = await triton_infer(site, "echo_int64", array, binary=True, name="INPUT0")
        assert result.as_numpy("OUTPUT0").tolist() == [[CARD]]
        assert site.off_site() == []


class TestFallback:
    async def test_a_later_tier_whose_policy_keeps_the_value_serves_it(
        self, tmp_path: Path, models: Path
    ) -> None:
        """Refused for regional (tokenize), the request falls back to central, whose policy
        here keeps cards: central gets the number, regional nothing, and the reasons say so."""
        async with (
            site_with(tmp_path, models, bundle_with(tmp_path, "keep")) as made,
            aiohttp.ClientSession() as http,
        ):
            body = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1], "data": [CARD]}]}
            async with http.post(f"{made.url}/v2/models/v2-both/infer", json=body) as response:
                assert response.status == 200, await response.text()
                reasons = response.headers["X-Route-Reason"]
            assert "X-Redactions" not in response.headers  # nothing was redacted and sent
            assert "failed:regional:numeric_tensor_redaction" in reasons, reasons
            assert "fallback:central" in reasons, reasons
            assert made.fakes["regional"].received == []
            [record] = made.fakes["central"].received
            assert orjson.loads(record.body)["inputs"][0]["data"] == [CARD]

    async def test_when_no_tier_may_take_it_the_clear_422_wins(self, site: Site) -> None:
        """Regional and central both tokenize cards: the client gets the 422 that says what
        to change (not a 503 to retry), and nothing was sent to either."""
        array = np.array([CARD], dtype=np.int64)
        message = await refusal(site, "v2-both", array, binary=True)
        assert "the regional tier may not receive" in message, message
        assert site.off_site() == []


async def test_the_refused_value_is_in_no_log_error_audit_or_metric(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """A canary card refused in an INT64 tensor: absent from the logs, the error body, the
    audit record (which counts the CARD found, none redacted, the reason) and /metrics
    (which count no redaction)."""
    caplog.set_level(logging.DEBUG)
    inputs = [tensor(np.array([CANARY], dtype=np.int64), binary=True)]
    body, json_size = triton_http.InferenceServerClient.generate_request_body(inputs)
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(json_size),
    }
    async with aiohttp.ClientSession() as http:
        url = f"{site.url}/v2/models/v2-central/infer"
        async with http.post(url, data=body, headers=headers) as response:
            error = await response.read()
            assert response.status == 422, error
            audit_id = response.headers["X-Audit-Id"]
            reasons = response.headers["X-Route-Reason"]
            assert "X-Redactions" not in response.headers  # nothing was redacted and sent
        async with http.get(site.router.admin_url + "/metrics") as response:
            metrics = await response.text()
    assert "holds a CARD value" in orjson.loads(error)["error"]
    assert "failed:central:numeric_tensor_redaction" in reasons, reasons
    digits_absent(error, CANARY)
    digits_absent(caplog.text, CANARY)
    digits_absent(metrics, CANARY)
    assert 'redactions_total{entity="CARD"}' not in metrics
    site.router.stop()  # the audit log is flushed and closed
    for path in site.audit.iterdir():
        digits_absent(path.read_bytes(), CANARY)
    (record,) = show(site.audit, audit_id).records
    assert record.entry["status"] == 422
    assert record.entry["entities"] == {"CARD": 1}
    assert record.entry["redactions"] == {}
    assert "failed:central:numeric_tensor_redaction" in record.entry["reasons"]
    assert site.off_site() == []
