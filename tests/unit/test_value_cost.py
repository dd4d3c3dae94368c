"""router/inference/value_cost.py: models whose run time follows their inputs' values never
run on the event loop (README, "Inline runs")."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from _models import _finish, double_model, write_model
from onnx import TensorProto, helper

from router.errors import DeadlineExceeded
from router.inference.repository import Loader, ModelRepository, available_providers
from router.inference.value_cost import sized_by_values
from router.settings import ModelSettings


def _body() -> onnx.GraphProto:
    """One step: acc = tanh(acc @ w), the condition passed on as it came."""
    return helper.make_graph(
        [
            helper.make_node("MatMul", ["acc_in", "w"], ["acc_mm"]),
            helper.make_node("Tanh", ["acc_mm"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["N", 4]),
        ],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.1] * 16)],
    )


def _spin_model(constant_trips: bool = False) -> bytes:
    """y = x after n steps of tanh(x @ w): a Loop whose trip count is the input n (or, with
    constant_trips, a constant of the graph)."""
    body = _body()
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])]
    initializers = []
    if constant_trips:
        initializers.append(helper.make_tensor("n", TensorProto.INT64, [], [3]))
    else:
        inputs.insert(0, helper.make_tensor_value_info("n", TensorProto.INT64, []))
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)],
        "spin",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=initializers,
    )
    return _finish(graph)


def _expand_model(shape_from_input: bool) -> bytes:
    """y = x expanded to a shape: the input `shape`, or a constant [4, 4]."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
    nodes = [helper.make_node("Expand", ["x", "shape"], ["y"])]
    if shape_from_input:
        inputs.append(helper.make_tensor_value_info("shape", TensorProto.INT64, [2]))
    else:
        value = helper.make_tensor("value", TensorProto.INT64, [2], [4, 4])
        nodes.insert(0, helper.make_node("Constant", [], ["shape"], value=value))
    graph = helper.make_graph(
        nodes, "expand", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["A", 4])]
    )
    return _finish(graph)


def test_sizes_from_inputs_are_found() -> None:
    """A Loop's trip count or Expand's shape taken from a request's values is found."""
    assert sized_by_values(_spin_model())
    assert sized_by_values(_expand_model(shape_from_input=True))


def test_a_loop_without_a_trip_count_is_found() -> None:
    """A Loop with no trip count runs until its body says stop: no constant bounds it."""
    graph = helper.make_graph(
        [helper.make_node("Loop", ["", "c", "x"], ["y"], body=_body())],
        "until",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[helper.make_tensor("c", TensorProto.BOOL, [], [True])],
    )
    assert sized_by_values(_finish(graph))


def test_constant_sizes_and_plain_models_are_not() -> None:
    """Sizes from initializers or Constant nodes, and models without such ops, are fine."""
    assert not sized_by_values(_spin_model(constant_trips=True))
    assert not sized_by_values(_expand_model(shape_from_input=False))
    assert not sized_by_values(double_model())


def test_unreadable_bytes_are_taken_as_sized_by_values() -> None:
    """Bytes that are no readable model are not trusted on the loop."""
    assert sized_by_values(b"\xff\xff\xff")


def test_a_loop_over_an_input_count_never_runs_on_the_event_loop(tmp_path: Path) -> None:
    """Loaded with inline runs on, a model whose Loop runs an input's count of times gets
    none (a tiny request could stall the loop for as long as it liked); a plain model does."""
    write_model(tmp_path, "spin", 1, _spin_model())
    write_model(tmp_path, "double", 1, double_model())
    with ThreadPoolExecutor(1) as pool:
        settings = ModelSettings(inference_threads=1, inline_max_us=100)
        repo = Loader(settings, pool, available_providers()).load(tmp_path)
        try:
            spin, double = repo.get("spin").runner, repo.get("double").runner
            assert spin is not None
            assert double is not None
            assert not spin.inline_runs
            assert double.inline_runs
        finally:
            repo.close()


async def test_a_run_sized_by_values_stops_at_its_deadline(tmp_path: Path) -> None:
    """A request asking such a model for a billion steps is stopped when its deadline passes
    (DeadlineExceeded), instead of holding an inference thread for hours; the next runs."""
    write_model(tmp_path, "spin", 1, _spin_model())
    x = np.zeros((1, 4), dtype=np.float32)
    with ThreadPoolExecutor(1) as pool:
        repo = Loader(ModelSettings(inference_threads=1), pool, available_providers()).load(
            tmp_path
        )
        try:
            runner = repo.get("spin").runner
            assert runner is not None
            loop = asyncio.get_running_loop()
            endless = runner.infer({"n": np.array(10**9), "x": x}, loop.time() + 0.3)
            with pytest.raises(DeadlineExceeded):
                await asyncio.wait_for(endless, 20.0)
            (y,) = await asyncio.wait_for(runner.infer({"n": np.array(2), "x": x}, 1e12), 20.0)
            assert y.shape == (1, 4)
        finally:
            repo.close()


def test_a_warm_up_that_would_never_end_is_stopped(tmp_path: Path) -> None:
    """A Loop with no trip count whose condition never turns false runs forever on the
    warm-up's zeros: the load stops it (warmup_limit_s) and the model still loads."""
    graph = helper.make_graph(
        [helper.make_node("Loop", ["", "c", "x"], ["y"], body=_body())],
        "forever",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[helper.make_tensor("c", TensorProto.BOOL, [], [True])],
    )
    write_model(tmp_path, "forever", 1, _finish(graph))
    loaded: list[ModelRepository] = []
    with ThreadPoolExecutor(1) as pool:
        loader = Loader(
            ModelSettings(inference_threads=1), pool, available_providers(), warmup_limit_s=0.2
        )
        thread = threading.Thread(target=lambda: loaded.append(loader.load(tmp_path)), daemon=True)
        thread.start()
        thread.join(20.0)
        assert loaded, "the load never ended"
        assert loaded[0].get("forever").ready
        loaded[0].close()
