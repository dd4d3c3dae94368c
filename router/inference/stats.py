"""Per model-version statistics in the shape of Triton's `GET /v2/models/{m}/stats`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    """Updated only on the event loop thread, so plain integers suffice."""

    inference_count: int = 0  # rows served
    execution_count: int = 0  # session runs (a batch counts once)
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)

    def record_execution(self, requests: int, rows: int, timings: tuple[int, int, int]) -> None:
        c_in, c_infer, c_out = timings
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)
        # Triton counts each request of a batch with the whole batch's duration, so that
        # ns / count is what a request waited on the model; batch_stats count each run once.
        for total, ns in (
            (self.compute_input, c_in),
            (self.compute_infer, c_infer),
            (self.compute_output, c_out),
        ):
            total.add(ns * requests, requests)
        per_size = self.batches.get(rows)
        if per_size is None:
            per_size = self.batches[rows] = BatchStats()
        per_size.compute_input.add(c_in)
        per_size.compute_infer.add(c_infer)
        per_size.compute_output.add(c_out)

    def busy_ns(self, phase: str) -> int:
        """Time the model spent in `phase` ("input", "infer", "output"), each run once."""
        return sum(getattr(b, f"compute_{phase}").ns for b in self.batches.values())

    def as_dict(self, name: str, version: str) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                # Triton's model response cache, which we do not have (the router's own cache
                # answers before a model is reached): always zero, but present, as Triton's
                # clients index them unconditionally (perf_analyzer's statistics parser).
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.as_dict(),
                    "compute_infer": b.compute_infer.as_dict(),
                    "compute_output": b.compute_output.as_dict(),
                }
                for size, b in sorted(self.batches.items())
            ],
        }
