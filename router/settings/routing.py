"""Local models and the routing between them and upstreams: budgets, heavy models, escalation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from router.settings.base import PathPrefix, PositiveInt
from router.yamlconf import Strict


class ModelSettings(Strict):
    # None means the demo repository bundled with the program.
    repository: Path | None = None
    # Threads that run inference off the event loop, shared by every model.
    inference_threads: PositiveInt = Field(default_factory=lambda: max(1, os.cpu_count() or 1))
    # Requests queued per model before new ones get 503 + Retry-After.
    max_queue_size: PositiveInt = 256
    # Models whose measured run is shorter than this run on the event loop when idle: for them
    # a hand-off to a thread costs more CPU and latency than the work. 0 turns it off.
    inline_max_us: Annotated[int, Field(ge=0, le=1000)] = 100
    # Restrict or reorder onnxruntime execution providers for every model on this site.
    execution_providers: tuple[str, ...] = ()

    @field_validator("execution_providers")
    @classmethod
    def _known_providers(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        """A misspelt name would silently restrict every model to CPU."""
        if names:
            import onnxruntime as ort  # only when a list is given: the import is not free

            unknown = [n for n in names if n not in ort.get_all_providers()]
            if unknown:
                raise ValueError(f"not an onnxruntime execution provider: {', '.join(unknown)}")
        return names


class EscalationSettings(Strict):
    to_model: Annotated[str, Field(min_length=1)]
    threshold: Annotated[float, Field(gt=0, le=1)]
    output: str | None = None  # the scores to judge; None: the model's label output


class ModelRouteSettings(Strict):
    heavy: bool = False  # never run locally, even when the model is here
    budget_ms: PositiveInt | None = None
    escalate: EscalationSettings | None = None


class RoutingSettings(Strict):
    # Budgets for requests that state none (X-Latency-Budget-Ms, v2 parameters.timeout).
    kserve_v2_budget_ms: PositiveInt = 30_000
    openai_budget_ms: PositiveInt = 300_000
    local_max_payload_bytes: PositiveInt = 64 * 1024 * 1024
    # Path prefixes of side-effect-free routes, which may be retried; others only with an
    # Idempotency-Key header (chat and completions sample and bill: a replay is a new answer).
    idempotent_paths: tuple[PathPrefix, ...] = ("/v2/", "/v1/embeddings")
    offline: bool = False  # local-only: never contact an upstream
    models: dict[str, ModelRouteSettings] = {}
