"""onnxruntime's run failures as the router's errors, without the request's own values.

onnxruntime words some failures with the value that caused them ("indices element out of
data bounds, idx=4111111111111111"): an error never echoes what the client sent (it may be a
card number the numeric tensor scan let through to a local model), so such a number is masked.
Numbers of three digits or fewer stay (an index, a small count say nothing about anyone),
and so do those the request does not hold (shapes, the graph's own bounds).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from router.errors import InferenceFailed, InvalidTensor

_NUMBER = re.compile(r"(?<![\w.])-?\d{4,}(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")
MASK = "<value>"


def run_error(
    label: str, error: BaseException | None, feeds: Mapping[str, np.ndarray]
) -> Exception:
    """InvalidTensor for an input the model refused, else InferenceFailed: the first line of
    onnxruntime's reason, any number of the request in it masked."""
    lines = str(error).strip().splitlines() if error is not None else []
    reason = without_request_values(lines[0][:300], feeds) if lines else type(error).__name__
    if type(error).__name__ == "InvalidArgument":
        return InvalidTensor(f"model {label} rejected the input: {reason}")
    return InferenceFailed(f"model {label} failed to run: {reason}")


def without_request_values(reason: str, feeds: Mapping[str, np.ndarray]) -> str:
    numeric = [a for a in feeds.values() if a.dtype.kind in "iuf" and a.size]

    def mask(match: re.Match[str]) -> str:
        value = float(match.group())
        return MASK if any(np.any(a == value) for a in numeric) else match.group()

    return _NUMBER.sub(mask, reason) if numeric else reason
