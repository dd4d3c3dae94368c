"""Serve a decoded v2 request with a local model version."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from router.errors import InvalidTensor
from router.inference.repository import ModelVersion
from router.v2.request import InferRequest, RequestedOutput
from router.v2.response import OutputTensor, classify


@dataclass(slots=True)
class LocalResult:
    outputs: list[OutputTensor]  # what the client asked for, shaped for the response
    raw: list[np.ndarray]  # every graph output, in graph order


# Classifying more elements than this happens off the event loop: ranking and writing a
# "score:index:label" string per class is Python work (~2.5 us an element), so a large output
# ranked whole (class_count of a million) would stall every request on the loop for seconds.
CLASSIFIED_ON_LOOP = 4096


async def run_local(entry: ModelVersion, request: InferRequest, deadline: float) -> LocalResult:
    signature, runner = entry.signature, entry.runner
    assert signature is not None, "only ready versions are served"
    assert runner is not None, "only ready versions are served"
    wanted, positions = check_request(entry, request)
    raw = await runner.infer({t.name: t.array for t in request.inputs}, deadline)
    ranked = sum(
        raw[pos].size for want, pos in zip(wanted, positions, strict=True) if want.classification
    )
    if ranked > CLASSIFIED_ON_LOOP:
        outputs = await asyncio.to_thread(_outputs, entry, wanted, positions, raw)
    else:
        outputs = _outputs(entry, wanted, positions, raw)
    return LocalResult(outputs, raw)


def _outputs(
    entry: ModelVersion, wanted: list[RequestedOutput], positions: list[int], raw: list[np.ndarray]
) -> list[OutputTensor]:
    """The outputs the client asked for, classified where it asked for that."""
    assert entry.signature is not None, "only ready versions are served"
    labels = _labels(entry)
    outputs = []
    for want, pos in zip(wanted, positions, strict=True):
        array = raw[pos]
        if want.classification:
            array = classify(
                array,
                want.classification,
                labels.get(want.name, ()),
                batched=entry.signature.batchable,
            )
        outputs.append(OutputTensor(want.name, array, want.binary))
    return outputs


def check_request(
    entry: ModelVersion, request: InferRequest
) -> tuple[list[RequestedOutput], list[int]]:
    """Raise InvalidTensor unless `request` fits the version's signature; the outputs it
    wants, and their positions among the model's."""
    signature = entry.signature
    assert signature is not None, "only loaded versions have a signature"
    signature.check_inputs(request.inputs)
    wanted = request.outputs or [
        RequestedOutput(spec.name, request.binary_output) for spec in signature.outputs
    ]
    return wanted, _output_positions(entry, wanted)


def top_score(entry: ModelVersion, result: LocalResult, output: str | None) -> float | None:
    """The weakest row's best score on `output` (the label output when None): what small-model
    fronting compares with its escalation threshold. None when there is no such float output."""
    assert entry.signature is not None
    names = [spec.name for spec in entry.signature.outputs]
    name = output or entry.config.label_output or names[0]
    if name not in names:
        return None
    scores = result.raw[names.index(name)]
    if scores.dtype.kind != "f" or scores.size == 0:
        return None
    best = scores.max(axis=-1) if scores.ndim else scores
    return float(np.min(best))


def _output_positions(entry: ModelVersion, wanted: list[RequestedOutput]) -> list[int]:
    assert entry.signature is not None
    outputs = entry.signature.outputs
    names = [spec.name for spec in outputs]
    positions = []
    for want in wanted:
        if want.name not in names:
            raise InvalidTensor(f"model '{entry.model}' has no output '{want.name}'")
        position = names.index(want.name)
        if want.classification and outputs[position].datatype.is_bytes:
            raise InvalidTensor(f"output '{want.name}': classification needs scores, not BYTES")
        positions.append(position)
    return positions


def _labels(entry: ModelVersion) -> dict[str, tuple[str, ...]]:
    config = entry.config
    if not config.labels or entry.signature is None:
        return {}
    target = config.label_output or entry.signature.outputs[0].name
    return {target: config.labels}
