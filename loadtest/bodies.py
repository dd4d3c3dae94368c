"""Request bodies for the scenarios: no locust import here, so tests can read them."""

from __future__ import annotations

import json
import random

# v1 of color_classifier is confident (>= 0.99) near these prototypes: answered at the edge.
CONFIDENT = ([0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
# v2 scores red at 0.63, under the demo's 0.9 threshold: escalated to central's large model.
DOUBTFUL = [1.0, 0.0, 0.0]
CHAT_MODEL = "mock-llm"
PERSONAL = "Call Jane Doe on +49 30 1234567 or write to jane.doe@example.com about the invoice."
PLAIN = "Summarise the shift report for line 3 in two sentences."


def rgb(values: list[float]) -> bytes:
    doc = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": values}]}
    return json.dumps(doc).encode()


def cached_rgb(rng: random.Random) -> bytes:
    """One of a few fixed bodies: after the first of each, every answer is a cache hit."""
    return rgb(rng.choice(CONFIDENT))


def _noisy(base: list[float], rng: random.Random) -> bytes:
    """Move every channel a little into the range: noise clamped at 0 or 1 left all three
    channels on the prototype one time in eight, a repeated body the cache answered."""
    inward = [-1.0 if v > 0.5 else 1.0 for v in base]
    return rgb([v + d * rng.uniform(0.001, 0.02) for v, d in zip(base, inward, strict=True)])


def fresh_rgb(rng: random.Random) -> bytes:
    """A confident colour with a little noise: never seen before, so inference runs."""
    return _noisy(rng.choice(CONFIDENT), rng)


def doubtful_rgb(rng: random.Random) -> bytes:
    """Red with a little noise: unsure at the edge, escalated (and never a cache hit)."""
    return _noisy(DOUBTFUL, rng)


def chat(text: str, stream: bool = False) -> bytes:
    doc: dict[str, object] = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 32,
    }
    if stream:
        doc["stream"] = True
    return json.dumps(doc).encode()
