"""Requests' tensors stacked into one batch along the first dimension, and the model's outputs
split back into each request's rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Feeds = dict[str, np.ndarray]
Outputs = list[np.ndarray]


class Unbatchable(ValueError):
    """The model's outputs cannot be split per request: a fault of its configuration, which
    every request of the batch reports (running each alone would hide it)."""


def stack(feeds: Sequence[Feeds]) -> Feeds:
    """One feed per input name: every request's rows, in order."""
    names = feeds[0].keys()
    return {name: np.concatenate([feed[name] for feed in feeds]) for name in names}


def split(outputs: Outputs, rows: Sequence[int]) -> list[Outputs]:
    """Each request's slice of every output, for requests of `rows` rows each, in order."""
    total = sum(rows)
    for out in outputs:
        if out.shape[:1] != (total,):
            # An open first dimension that is not the batch (say, a count of detections):
            # slicing it by request would hand out other requests' results.
            raise Unbatchable(
                f"an output's first dimension is {out.shape[:1]}, not the batch of {total} "
                "rows: this model cannot be batched (set max_batch_size: 0)"
            )
    parts, start = [], 0
    for count in rows:
        end = start + count
        parts.append([out[start:end] for out in outputs])
        start = end
    return parts
