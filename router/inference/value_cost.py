"""Whether a model's run time can grow with the *values* of its inputs, not only their size.

An op that sizes its output from a tensor's values (a Loop's trip count, Range's limit,
Expand's or Tile's or ConstantOfShape's shape, Pad's pads, Resize's scales, OneHot's depth)
lets one small request ask for any amount of work. The inline gate scales a run's expected
time by its input's bytes (README, "Inline runs"): for such a model a few bytes can stall
the event loop for as long as the caller likes, again and again. So a model where such a size
comes from anything but a constant never runs on the loop.

Read off protobuf's wire format as graph_shapes.py reads shapes (no `onnx` at run time):
    GraphProto.node = 1, .initializer = 5 → TensorProto.name = 8
    NodeProto.input = 1, .output = 2, .op_type = 4, .attribute = 5 → AttributeProto.g = 6,
    .graphs = 11 (the bodies of Loop, If, Scan, looked into the same way)
"""

from __future__ import annotations

from router.inference.graph_shapes import _messages

_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5
_TENSOR_NAME = 8
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP, _NODE_ATTRIBUTE = 1, 2, 4, 5
_ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS = 6, 11

# op type -> positions of the inputs whose values size its output (or its number of steps)
SIZED_BY_VALUES: dict[str, tuple[int, ...]] = {
    "Loop": (0, 1),
    "Range": (0, 1, 2),
    "Expand": (1,),
    "Tile": (1,),
    "ConstantOfShape": (0,),
    "Pad": (1,),
    "CenterCropPad": (1,),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "OneHot": (1,),
    "Col2Im": (1, 2),
    "DFT": (1,),
    "MelWeightMatrix": (0, 1),
    "HannWindow": (0,),
    "HammingWindow": (0,),
    "BlackmanWindow": (0,),
}


def sized_by_values(model: bytes) -> bool:
    """Whether some op sizes its work by a tensor that is not a constant of the graph; True
    for bytes that are not a readable model (the session that loaded them decides that)."""
    try:
        graphs = [g for field, g in _messages(memoryview(model)) if field == _MODEL_GRAPH]
        return any(_graph_sized_by_values(g, frozenset()) for g in graphs)
    except ValueError:
        return True


def _graph_sized_by_values(graph: memoryview, outer_constants: frozenset[str]) -> bool:
    nodes = [part for field, part in _messages(graph) if field == _GRAPH_NODE]
    constants = set(outer_constants)
    for field, part in _messages(graph):
        if field == _GRAPH_INITIALIZER:
            constants.update(_text(p) for f, p in _messages(part) if f == _TENSOR_NAME)
    parsed = [_node(node) for node in nodes]
    for op, _, outputs, _ in parsed:
        if op == "Constant":
            constants.update(outputs)
    known = frozenset(constants)
    for op, inputs, _, bodies in parsed:
        sizes = [inputs[i] for i in SIZED_BY_VALUES.get(op, ()) if i < len(inputs)]
        if any(name and name not in known for name in sizes):
            return True
        if op == "Loop" and not (inputs and inputs[0]):
            return True  # no trip count: it runs until its body's condition says stop
        if any(_graph_sized_by_values(body, known) for body in bodies):
            return True
    return False


def _node(node: memoryview) -> tuple[str, list[str], list[str], list[memoryview]]:
    op, inputs, outputs, bodies = "", [], [], []
    for field, part in _messages(node):
        if field == _NODE_OP:
            op = _text(part)
        elif field == _NODE_INPUT:
            inputs.append(_text(part))
        elif field == _NODE_OUTPUT:
            outputs.append(_text(part))
        elif field == _NODE_ATTRIBUTE:
            bodies += [g for f, g in _messages(part) if f in (_ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS)]
    return op, inputs, outputs, bodies


def _text(part: memoryview) -> str:
    return bytes(part).decode("utf-8", "replace")
