"""In-process onnxruntime cost of the benchmark models: session.run, nothing around it.

Same session options as the router (intra-op 1, inter-op 1, ORT_ENABLE_ALL) and the same single
input the HTTP cells send. Run it pinned to the core the servers get, while no server runs:
  taskset -c 0 python bench/inprocess.py --repo DIR [--seconds 1.5]
Prints one JSON object: model -> {p50_us, p99_us, mean_us, cpu_us_per_call, calls, probs}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import models
import numpy as np


def measure(session: Any, feeds: dict[str, np.ndarray], seconds: float) -> dict[str, Any]:
    for _ in range(3):
        session.run(None, feeds)
    laps: list[int] = []
    cpu0, end = time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < end or len(laps) < 20:
        t0 = time.perf_counter_ns()
        outputs = session.run(None, feeds)
        laps.append(time.perf_counter_ns() - t0)
    cpu = time.process_time() - cpu0
    laps.sort()
    return {
        "calls": len(laps),
        "p50_us": laps[len(laps) // 2] / 1e3,
        "p99_us": laps[min(len(laps) - 1, int(len(laps) * 0.99))] / 1e3,
        "mean_us": statistics.fmean(laps) / 1e3,
        "cpu_us_per_call": cpu * 1e6 / len(laps),
        "probs": outputs[0].ravel().tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--image-size", type=int, default=models.IMAGE_SIZE)
    args = ap.parse_args()
    inputs = {"mlp": models.mlp_input(), "image": models.image_input(args.image_size)}
    result = {}
    for name, array in inputs.items():
        session = models.make_session(args.repo / name / "1" / "model.onnx")
        feeds = {models.INPUTS[name]: array}
        result[name] = measure(session, feeds, args.seconds)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
