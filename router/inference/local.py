"""Serve a decoded v2 request with a local model version."""

from __future__ import annotations

from router.errors import InvalidTensor
from router.inference.repository import ModelVersion
from router.v2.codec import InferRequest, OutputTensor, RequestedOutput, classify, encode_response


async def infer_v2(
    entry: ModelVersion, request: InferRequest, deadline: float
) -> tuple[bytes, int | None]:
    signature, runner = entry.signature, entry.runner
    assert signature is not None, "only ready versions are served"
    assert runner is not None, "only ready versions are served"
    signature.check_inputs(request.inputs)
    wanted = request.outputs or [
        RequestedOutput(spec.name, request.binary_output) for spec in signature.outputs
    ]
    positions = _output_positions(entry, wanted)
    results = await runner.infer({t.name: t.array for t in request.inputs}, deadline)
    labels = _labels(entry)
    outputs = []
    for want, pos in zip(wanted, positions, strict=True):
        array = results[pos]
        if want.classification:
            array = classify(array, want.classification, labels.get(want.name, ()))
        outputs.append(OutputTensor(want.name, array, want.binary))
    return encode_response(entry.model, str(entry.version), request.id, outputs)


def _output_positions(entry: ModelVersion, wanted: list[RequestedOutput]) -> list[int]:
    assert entry.signature is not None
    names = [spec.name for spec in entry.signature.outputs]
    positions = []
    for want in wanted:
        if want.name not in names:
            raise InvalidTensor(f"model '{entry.model}' has no output '{want.name}'")
        positions.append(names.index(want.name))
    return positions


def _labels(entry: ModelVersion) -> dict[str, tuple[str, ...]]:
    config = entry.config
    if not config.labels or entry.signature is None:
        return {}
    target = config.label_output or entry.signature.outputs[0].name
    return {target: config.labels}
