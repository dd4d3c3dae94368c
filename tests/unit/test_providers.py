"""router/inference/providers.py: choosing execution providers and falling back to CPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from _models import double_model

from router.inference.providers import (
    CPU,
    DEFAULT_ORDER,
    Attempt,
    Candidate,
    candidates,
    create_session,
)

CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
COREML = "CoreMLExecutionProvider"


def _names(chosen: list[Candidate]) -> list[str]:
    return [c.name for c in chosen]


class TestCandidates:
    def test_default_order_filtered_by_available(self) -> None:
        """With no preference, the default order is kept and narrowed to what is installed."""
        chosen = candidates([], [CPU, OPENVINO, CUDA])
        assert _names(chosen) == [CUDA, OPENVINO, CPU]

    def test_default_order_is_fastest_first(self) -> None:
        """Everything installed gives the whole default order, CPU last."""
        assert _names(candidates([], list(DEFAULT_ORDER))) == list(DEFAULT_ORDER)

    def test_model_preference_order_is_honoured(self) -> None:
        """A model's preference order wins over the default order."""
        chosen = candidates([Candidate(OPENVINO, {}), Candidate(CUDA, {})], [CUDA, OPENVINO, CPU])
        assert _names(chosen) == [OPENVINO, CUDA, CPU]

    def test_preference_keeps_options(self) -> None:
        """Provider options from the model config travel with the candidate."""
        chosen = candidates([Candidate(CUDA, {"device_id": 1})], [CUDA, CPU])
        assert chosen[0] == Candidate(CUDA, {"device_id": 1})

    def test_unavailable_preference_is_dropped(self) -> None:
        """A preferred provider that is not installed is skipped."""
        chosen = candidates([Candidate(OPENVINO, {})], [CPU])
        assert _names(chosen) == [CPU]

    def test_unknown_names_are_dropped(self) -> None:
        """A misspelt or made-up provider never reaches onnxruntime."""
        chosen = candidates([Candidate("WarpDriveExecutionProvider", {})], [CUDA, CPU])
        assert _names(chosen) == [CPU]

    def test_site_restriction(self) -> None:
        """The site's allow-list narrows the choice; CPU stays allowed."""
        chosen = candidates([], [TRT, CUDA, OPENVINO, CPU], site_allowed=[OPENVINO])
        assert _names(chosen) == [OPENVINO, CPU]

    def test_site_list_orders_models_without_a_preference(self) -> None:
        """The site's list is also the order for a model that states none, as its settings
        comment promises ("restrict or reorder")."""
        chosen = candidates([], [TRT, CUDA, OPENVINO, CPU], site_allowed=[OPENVINO, CUDA])
        assert _names(chosen) == [OPENVINO, CUDA, CPU]

    def test_site_restriction_with_model_preference(self) -> None:
        """A model's preference outside the site's allow-list is dropped."""
        chosen = candidates(
            [Candidate(CUDA, {}), Candidate(OPENVINO, {})],
            [CUDA, OPENVINO, CPU],
            site_allowed=[OPENVINO],
        )
        assert _names(chosen) == [OPENVINO, CPU]

    def test_cpu_listed_once(self) -> None:
        """CPU named in a preference is not added a second time."""
        chosen = candidates([Candidate(CUDA, {}), Candidate(CPU, {"x": 1})], [CUDA, CPU])
        assert chosen == [Candidate(CUDA, {}), Candidate(CPU, {"x": 1})]

    def test_cpu_always_last(self) -> None:
        """CPU ends the list even when a model prefers it first."""
        chosen = candidates([Candidate(CPU, {}), Candidate(CUDA, {})], [CUDA, CPU])
        assert _names(chosen) == [CUDA, CPU]

    def test_cpu_added_when_not_preferred(self) -> None:
        """A preference list without CPU still gets CPU as the floor."""
        chosen = candidates([Candidate(CUDA, {})], [CUDA, CPU])
        assert _names(chosen) == [CUDA, CPU]

    def test_cpu_added_even_when_not_reported(self) -> None:
        """CPU is the floor even if the available list leaves it out."""
        assert _names(candidates([], [])) == [CPU]

    def test_never_duplicated(self) -> None:
        """A provider named twice is tried once."""
        chosen = candidates(
            [Candidate(CUDA, {}), Candidate(CUDA, {"device_id": 1}), Candidate(CPU, {})],
            [CUDA, CPU],
        )
        assert _names(chosen) == [CUDA, CPU]
        assert chosen[0].options == {}


class FakeSession:
    def __init__(self, providers: list[str]) -> None:
        self._providers = providers

    def get_providers(self) -> list[str]:
        return self._providers


class FailingFactory:
    """A session factory that fails for the named providers and records every call."""

    def __init__(self, failing: dict[str, Exception], runs_on: str | None = None) -> None:
        self.failing = failing
        self.runs_on = runs_on
        self.calls: list[list[tuple[str, dict[str, Any]]]] = []

    def __call__(self, chosen: list[tuple[str, dict[str, Any]]]) -> FakeSession:
        self.calls.append(chosen)
        first = chosen[0][0]
        if first in self.failing:
            raise self.failing[first]
        return FakeSession([self.runs_on or first, CPU])


class TestCreateSession:
    def test_first_candidate_wins(self) -> None:
        """When the first provider loads, nothing else is tried and no attempt is recorded."""
        factory = FailingFactory({})
        session, used, attempts = create_session(
            factory, [Candidate(CUDA, {"device_id": 0}), Candidate(CPU, {})], "m/1"
        )
        assert isinstance(session, FakeSession)
        assert used == CUDA
        assert attempts == []
        assert factory.calls == [[(CUDA, {"device_id": 0}), (CPU, {})]]

    def test_cpu_backs_up_an_accelerator_but_not_itself(self) -> None:
        """An accelerator is created with CPU behind it; CPU alone is created alone."""
        factory = FailingFactory({CUDA: RuntimeError("no device")})
        create_session(factory, [Candidate(CUDA, {}), Candidate(CPU, {})], "m/1")
        assert factory.calls == [[(CUDA, {}), (CPU, {})], [(CPU, {})]]

    def test_falls_back_and_records_first_lines(self) -> None:
        """Failed providers are recorded with the first line of their error, in order."""
        factory = FailingFactory(
            {
                TRT: RuntimeError("TensorRT init failed\nstack trace line\nmore"),
                CUDA: ValueError("  libcudart.so.12: cannot open\n  details"),
            }
        )
        _, used, attempts = create_session(
            factory, [Candidate(TRT, {}), Candidate(CUDA, {}), Candidate(CPU, {})], "m/1"
        )
        assert used == CPU
        assert attempts == [
            Attempt(TRT, "TensorRT init failed"),
            Attempt(CUDA, "libcudart.so.12: cannot open"),
        ]

    def test_empty_error_message_names_the_exception(self) -> None:
        """An error without a message is recorded by its type name."""
        factory = FailingFactory({CUDA: MemoryError()})
        _, _, attempts = create_session(factory, [Candidate(CUDA, {}), Candidate(CPU, {})], "m")
        assert attempts == [Attempt(CUDA, "MemoryError")]

    def test_long_error_is_cut(self) -> None:
        """A recorded error line is at most 300 characters."""
        factory = FailingFactory({CUDA: RuntimeError("x" * 1000)})
        _, _, attempts = create_session(factory, [Candidate(CUDA, {}), Candidate(CPU, {})], "m")
        assert len(attempts[0].error) == 300

    def test_reports_the_provider_actually_used(self) -> None:
        """The provider reported is the session's own first provider, not the one asked for."""
        factory = FailingFactory({}, runs_on=CPU)
        _, used, attempts = create_session(factory, [Candidate(CUDA, {})], "m/1")
        assert used == CPU
        assert attempts == []

    def test_all_fail(self) -> None:
        """When every provider fails the error names each attempt."""
        factory = FailingFactory(
            {CUDA: RuntimeError("cuda broke\ntrace"), CPU: RuntimeError("bad model file")}
        )
        with pytest.raises(RuntimeError) as info:
            create_session(factory, [Candidate(CUDA, {}), Candidate(CPU, {})], "m/1")
        message = str(info.value)
        assert f"{CUDA}: cuda broke" in message
        assert f"{CPU}: bad model file" in message
        assert "trace" not in message


def _real_factory(chosen: list[tuple[str, dict[str, Any]]]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(double_model(), options, providers=chosen)


class TestWithOnnxruntime:
    def test_unavailable_preference_runs_on_cpu(self) -> None:
        """Preferring OpenVINO on a CPU-only install gives a working CPU session."""
        choices = candidates([Candidate(OPENVINO, {})], [CPU])
        session, used, attempts = create_session(_real_factory, choices, "double/1")
        assert used == CPU
        assert attempts == []
        (out,) = session.run(None, {"x": np.ones((1, 2), np.float32)})
        np.testing.assert_array_equal(out, [[2.0, 2.0]])

    def test_provider_claimed_but_missing_reports_cpu(self) -> None:
        """If onnxruntime quietly drops a provider it lacks, the CPU it ran on is reported."""
        choices = candidates([Candidate(OPENVINO, {})], [OPENVINO, CPU])
        assert _names(choices) == [OPENVINO, CPU]
        with pytest.warns(UserWarning, match=OPENVINO):
            _, used, attempts = create_session(_real_factory, choices, "double/1")
        assert used == CPU
        assert attempts == []

    def test_unreadable_model_fails_with_every_attempt(self) -> None:
        """Bytes that are not a model fail on every provider, and the error says so."""

        def factory(chosen: list[tuple[str, dict[str, Any]]]) -> ort.InferenceSession:
            return ort.InferenceSession(b"not a model", providers=chosen)

        with pytest.raises(RuntimeError, match="no execution provider could load the model"):
            create_session(factory, candidates([], [CPU]), "broken/1")
