"""A model's inputs and outputs as the protocol sees them, read from the ONNX graph."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from router.errors import InvalidTensor
from router.v2.datatypes import Datatype, from_ort
from router.v2.request import InputTensor

DYNAMIC = -1


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: Datatype
    shape: tuple[int, ...]  # DYNAMIC where the graph leaves a dimension open
    # False: the graph gives no rank at all (its shape is then ()), so any shape will do.
    ranked: bool = True

    @property
    def reported_shape(self) -> list[int]:
        """The shape as metadata states it: a tensor of unknown rank is [-1] (any number of
        elements), never [] (a scalar), which clients would take at its word."""
        return list(self.shape) if self.ranked else [DYNAMIC]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype.name, "shape": self.reported_shape}

    def check(self, tensor: InputTensor) -> None:
        if tensor.datatype is not self.datatype:
            raise InvalidTensor(
                f"input '{self.name}': expected datatype {self.datatype.name}, "
                f"got {tensor.datatype.name}"
            )
        if not self.ranked:
            return  # the element count against the data was checked as the tensor was read
        if len(tensor.shape) != len(self.shape) or any(
            want not in (DYNAMIC, got) for want, got in zip(self.shape, tensor.shape, strict=True)
        ):
            raise InvalidTensor(
                f"input '{self.name}': expected shape {list(self.shape)}, got {list(tensor.shape)}"
            )


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def output(self, name: str) -> TensorSpec | None:
        return next((o for o in self.outputs if o.name == name), None)

    @property
    def batchable(self) -> bool:
        """Whether every tensor's first dimension is open, so requests can be stacked on it."""
        return all(t.shape and t.shape[0] == DYNAMIC for t in (*self.inputs, *self.outputs))

    def check_inputs(self, tensors: Sequence[InputTensor]) -> None:
        given = {t.name: t for t in tensors}
        for spec in self.inputs:
            tensor = given.pop(spec.name, None)
            if tensor is None:
                raise InvalidTensor(f"missing input '{spec.name}'")
            spec.check(tensor)
        if given:
            raise InvalidTensor(f"unknown input '{next(iter(given))}'")


def from_session(session: Any, unranked: Callable[[], frozenset[str]] = frozenset) -> Signature:
    """The session's tensors. onnxruntime reports a scalar and a tensor of unknown rank both
    as []: `unranked` names the latter (read from the graph only when some shape is [])."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names = unranked() if any(not arg.shape for arg in (*inputs, *outputs)) else frozenset()
    return Signature(
        inputs=tuple(_spec(arg, names) for arg in inputs),
        outputs=tuple(_spec(arg, names) for arg in outputs),
    )


def _spec(arg: Any, unranked: frozenset[str]) -> TensorSpec:
    datatype = from_ort(arg.type)
    if datatype is None:
        raise ValueError(
            f"tensor '{arg.name}' has type {arg.type}, which the protocol cannot carry"
        )
    # onnxruntime reports symbolic or unknown dimensions as str/None.
    shape = tuple(d if isinstance(d, int) and d >= 0 else DYNAMIC for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape, ranked=bool(shape) or arg.name not in unranked)
