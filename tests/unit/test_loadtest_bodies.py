"""The load-test bodies: the fresh ones must never repeat a prototype the cache holds."""

from __future__ import annotations

import json
import random

from loadtest import bodies


def _values(body: bytes) -> list[float]:
    return list(json.loads(body)["inputs"][0]["data"])


def test_fresh_bodies_never_hit_a_prototype() -> None:
    """A "fresh" colour never equals a prototype, so local-inference runs the model every time."""
    rng = random.Random(7)
    prototypes = [list(p) for p in bodies.CONFIDENT]
    drawn = [_values(bodies.fresh_rgb(rng)) for _ in range(400)]
    assert not [d for d in drawn if d in prototypes]
    assert all(0.0 <= v <= 1.0 for d in drawn for v in d)


def test_doubtful_bodies_never_repeat_plain_red() -> None:
    """An escalated colour is never plain red, which a cached answer would serve."""
    rng = random.Random(3)
    drawn = [_values(bodies.doubtful_rgb(rng)) for _ in range(400)]
    assert bodies.DOUBTFUL not in drawn
    assert all(0.0 <= v <= 1.0 for d in drawn for v in d)
