"""router/inference/model_config.py and repository.py: per-model config and loading a repository."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _models import double_model, lookup_model, write_model
from onnx import numpy_helper

from router.errors import ConfigError, ModelNotFound, ModelNotReady
from router.inference.model_config import ModelConfig, ProviderChoice, load_model_config
from router.inference.providers import CPU, Attempt
from router.inference.repository import (
    Loader,
    State,
    default_session_builder,
)
from router.inference.signature import DYNAMIC
from router.settings import ModelSettings

OPENVINO = "OpenVINOExecutionProvider"
FAR = 1e12


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-repo")
    yield pool
    pool.shutdown(wait=True)


class CountingBuilder:
    """The real session builder, wrapped to count warm-up runs and fail chosen providers."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.failing = failing
        self.runs = 0
        self.warmup_feeds: list[dict[str, tuple[tuple[int, ...], Any]]] = []

    def __call__(self, data: bytes, threads: int, chosen: list[tuple[str, dict[str, Any]]]) -> Any:
        if chosen[0][0] in self.failing:
            raise RuntimeError(f"{chosen[0][0]} could not start\nlong native trace")
        return _Counted(default_session_builder(data, threads, [(CPU, {})]), self, chosen[0][0])


class _Counted:
    def __init__(self, session: Any, owner: CountingBuilder, provider: str) -> None:
        self._session = session
        self._owner = owner
        self._provider = provider

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        self._owner.runs += 1
        self._owner.warmup_feeds.append({k: (v.shape, v.dtype) for k, v in feeds.items()})
        return self._session.run(names, feeds)

    def get_providers(self) -> list[str]:
        return [self._provider, CPU] if self._provider != CPU else [CPU]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def _loader(executor: Any, build: Any = None, available: tuple[str, ...] = (CPU,)) -> Loader:
    settings = ModelSettings(inference_threads=1, max_queue_size=7)
    if build is None:
        return Loader(settings, executor, available)
    return Loader(settings, executor, available, build)


def _config(repo: Path, name: str, text: str) -> None:
    (repo / name).mkdir(parents=True, exist_ok=True)
    (repo / name / "config.yaml").write_text(text, encoding="utf-8")


def _external_data_model(repo: Path) -> str:
    """<repo>/big/1/model.onnx doubling its input, its one weight in weights.bin beside it;
    returns model.onnx's sha256."""
    model = onnx.load_from_string(double_model())
    two = model.graph.initializer[0]
    two.CopyFrom(numpy_helper.from_array(np.array(2, np.float32), two.name))  # as raw_data
    folder = repo / "big" / "1"
    folder.mkdir(parents=True)
    onnx.save_model(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (folder / "weights.bin").exists()
    return hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()


def test_a_failed_run_writes_no_request_value_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    """onnxruntime's own logger (stderr, past the log config) would write the value a run
    failed on: a card number sent as an index must not reach the server's log that way."""
    session = default_session_builder(lookup_model(), 1, [(CPU, {})])
    card = 4111111111111111
    with pytest.raises(Exception, match="out of data bounds"):
        session.run(None, {"i": np.array([[card]], dtype=np.int64)})
    assert str(card) not in capfd.readouterr().err


class TestModelConfig:
    def test_no_file_gives_defaults(self, tmp_path: Path) -> None:
        """A model folder without config.yaml gets the default config."""
        assert load_model_config(tmp_path) == ModelConfig()

    def test_unknown_key_names_file_and_key(self, tmp_path: Path) -> None:
        """A misspelt key is a ConfigError naming config.yaml and the key."""
        _config(tmp_path, "m", "max_batch: 4\ndynamic_batching:\n  delay: 1\n")
        with pytest.raises(ConfigError) as info:
            load_model_config(tmp_path / "m")
        assert info.value.source == str(tmp_path / "m" / "config.yaml")
        assert sorted(info.value.problems) == [
            "dynamic_batching.delay: unknown key",
            "max_batch: unknown key",
        ]

    def test_execution_providers_as_names_or_objects(self, tmp_path: Path) -> None:
        """Providers may be plain names or {name, options} entries, mixed."""
        _config(
            tmp_path,
            "m",
            "execution_providers:\n"
            "  - CUDAExecutionProvider\n"
            "  - name: OpenVINOExecutionProvider\n"
            "    options: {device_type: CPU}\n",
        )
        config = load_model_config(tmp_path / "m")
        assert config.execution_providers == (
            ProviderChoice(name="CUDAExecutionProvider"),
            ProviderChoice(name=OPENVINO, options={"device_type": "CPU"}),
        )

    def test_labels_file(self, tmp_path: Path) -> None:
        """labels_file is read one label per line, relative to the model folder."""
        _config(tmp_path, "m", "labels_file: labels.txt\n")
        (tmp_path / "m" / "labels.txt").write_text("cat\ndog \nbird\n", encoding="utf-8")
        assert load_model_config(tmp_path / "m").labels == ("cat", "dog", "bird")

    def test_labels_file_with_a_byte_order_mark(self, tmp_path: Path) -> None:
        """A labels file saved with a UTF-8 BOM (Windows editors) does not glue the mark to
        the first label."""
        _config(tmp_path, "m", "labels_file: labels.txt\n")
        (tmp_path / "m" / "labels.txt").write_bytes("\ufeffcat\r\ndog\r\n".encode())
        assert load_model_config(tmp_path / "m").labels == ("cat", "dog")

    def test_missing_labels_file(self, tmp_path: Path) -> None:
        """A labels_file that cannot be read is a ConfigError naming labels_file."""
        _config(tmp_path, "m", "labels_file: nowhere.txt\n")
        with pytest.raises(ConfigError) as info:
            load_model_config(tmp_path / "m")
        (problem,) = info.value.problems
        assert problem.startswith("labels_file: cannot read")
        assert "nowhere.txt" in problem

    def test_bad_sha256_pin(self, tmp_path: Path) -> None:
        """A pinned sha256 that is not 64 hex digits is refused, naming the version."""
        _config(tmp_path, "m", "sha256:\n  1: abc\n")
        with pytest.raises(ConfigError) as info:
            load_model_config(tmp_path / "m")
        (problem,) = info.value.problems
        assert problem.startswith("sha256.1: ")


class TestLoader:
    def test_bare_model_served_from_the_graph(self, tmp_path: Path, executor: Any) -> None:
        """A model.onnx with no config is READY, I/O read from the graph, -1 for open dims."""
        write_model(tmp_path, "double", 1, double_model(("N", 3)))
        repo = _loader(executor).load(tmp_path)
        entry = repo.get("double")
        assert entry.state is State.READY
        assert entry.reason == ""
        assert entry.provider == CPU
        assert entry.signature is not None
        assert [s.metadata() for s in entry.signature.inputs] == [
            {"name": "x", "datatype": "FP32", "shape": [DYNAMIC, 3]}
        ]
        assert [s.metadata() for s in entry.signature.outputs] == [
            {"name": "y", "datatype": "FP32", "shape": [DYNAMIC, 3]}
        ]
        assert repo.ready
        assert repo.failures == []

    async def test_loaded_model_runs(self, tmp_path: Path, executor: Any) -> None:
        """The runner of a loaded version computes the model's result."""
        write_model(tmp_path, "double", 1, double_model(("N", 2)))
        repo = _loader(executor).load(tmp_path)
        runner = repo.get("double").runner
        assert runner is not None
        (y,) = await runner.infer({"x": np.array([[1, 2]], np.float32)}, FAR)
        np.testing.assert_array_equal(y, [[2, 4]])
        repo.close()

    def test_highest_version_is_default(self, tmp_path: Path, executor: Any) -> None:
        """With no version asked for, the numerically highest one is served."""
        for version in (1, 2, 10):
            write_model(tmp_path, "m", version, double_model())
        repo = _loader(executor).load(tmp_path)
        assert repo.find("m").version == 10
        assert repo.find("m", "2").version == 2
        assert sorted(repo.models["m"].versions) == [1, 2, 10]

    def test_highest_ready_version_is_default(self, tmp_path: Path, executor: Any) -> None:
        """A broken highest version does not take the model down: requests naming no version
        get the highest version that loaded (Triton's choice), the broken one stays reported."""
        write_model(tmp_path, "m", 1, double_model())
        write_model(tmp_path, "m", 2, double_model())
        write_model(tmp_path, "m", 3, b"this is not an onnx file")
        repo = _loader(executor).load(tmp_path)
        assert repo.get("m").version == 2
        assert repo.find("m", "3").state is State.UNAVAILABLE
        assert not repo.ready
        with pytest.raises(ModelNotReady):
            repo.get("m", "3")

    def test_unknown_model(self, tmp_path: Path, executor: Any) -> None:
        """An unknown model name is ModelNotFound."""
        write_model(tmp_path, "m", 1, double_model())
        repo = _loader(executor).load(tmp_path)
        with pytest.raises(ModelNotFound):
            repo.find("other")
        with pytest.raises(ModelNotFound):
            repo.get("other", "1")

    @pytest.mark.parametrize("version", ["7", "latest", "-1", "1.0", ""])
    def test_unknown_version(self, tmp_path: Path, executor: Any, version: str) -> None:
        """A version that is not loaded (or not a number) is ModelNotFound."""
        write_model(tmp_path, "m", 1, double_model())
        repo = _loader(executor).load(tmp_path)
        with pytest.raises(ModelNotFound):
            repo.find("m", version)

    def test_unicode_digit_version(self, tmp_path: Path, executor: Any) -> None:
        """A version string of non-ASCII digits is ModelNotFound, not a ValueError."""
        write_model(tmp_path, "m", 1, double_model())
        repo = _loader(executor).load(tmp_path)
        with pytest.raises(ModelNotFound):
            repo.find("m", "²")

    def test_unicode_digit_folder(self, tmp_path: Path, executor: Any) -> None:
        """A version folder named with non-ASCII digits does not stop the repository loading."""
        write_model(tmp_path, "m", 1, double_model())
        (tmp_path / "m" / "²").mkdir()
        repo = _loader(executor).load(tmp_path)
        assert repo.get("m", "1").ready

    def test_broken_model_does_not_stop_the_others(self, tmp_path: Path, executor: Any) -> None:
        """A file that is not a model is UNAVAILABLE with a reason naming it; others load."""
        broken = write_model(tmp_path, "broken", 1, b"this is not an onnx file")
        write_model(tmp_path, "good", 1, double_model())
        repo = _loader(executor).load(tmp_path)
        entry = repo.find("broken")
        assert entry.state is State.UNAVAILABLE
        assert entry.reason.startswith(f"{broken}: ")
        assert "\n" not in entry.reason
        assert entry.runner is None
        assert repo.get("good").ready
        assert not repo.ready
        assert repo.failures == [f"broken/1: {entry.reason}"]
        with pytest.raises(ModelNotReady) as info:
            repo.get("broken")
        assert info.value.retry_after is not None

    def test_missing_model_file(self, tmp_path: Path, executor: Any) -> None:
        """A version folder without model.onnx is UNAVAILABLE, naming the missing file."""
        (tmp_path / "m" / "1").mkdir(parents=True)
        repo = _loader(executor).load(tmp_path)
        entry = repo.find("m", "1")
        assert entry.state is State.UNAVAILABLE
        assert str(tmp_path / "m" / "1" / "model.onnx") in entry.reason

    async def test_model_with_external_data(self, tmp_path: Path, executor: Any) -> None:
        """A model whose weights sit in a file beside model.onnx (ONNX external data, as large
        exports come) loads and runs, whatever the working directory."""
        _external_data_model(tmp_path)
        repo = _loader(executor).load(tmp_path)
        entry = repo.find("big")
        assert entry.ready, entry.reason
        assert entry.runner is not None
        (y,) = await entry.runner.infer({"x": np.array([[1, 2]], np.float32)}, FAR)
        np.testing.assert_array_equal(y, [[2, 4]])
        repo.close()

    def test_pinned_model_takes_no_external_data(self, tmp_path: Path, executor: Any) -> None:
        """A sha256 pin covers model.onnx only, so a pinned version whose weights sit in a
        file beside it does not load: they would run unverified."""
        digest = _external_data_model(tmp_path)
        _config(tmp_path, "big", f"sha256: {{1: {digest}}}\n")
        entry = _loader(executor).load(tmp_path).find("big")
        assert entry.state is State.UNAVAILABLE
        assert "external data" in entry.reason.lower()

    def test_sha256_matches_hashlib(self, tmp_path: Path, executor: Any) -> None:
        """The recorded sha256 is that of the model file's bytes."""
        data = double_model()
        write_model(tmp_path, "m", 1, data)
        repo = _loader(executor).load(tmp_path)
        assert repo.get("m").sha256 == hashlib.sha256(data).hexdigest()

    def test_pinned_sha256_matches(self, tmp_path: Path, executor: Any) -> None:
        """A pin that matches (in any letter case) lets the version load."""
        data = double_model()
        write_model(tmp_path, "m", 1, data)
        _config(tmp_path, "m", f"sha256:\n  1: '{hashlib.sha256(data).hexdigest().upper()}'\n")
        assert _loader(executor).load(tmp_path).get("m").ready

    def test_pinned_sha256_mismatch(self, tmp_path: Path, executor: Any) -> None:
        """A model whose bytes do not match the pinned sha256 is UNAVAILABLE."""
        path = write_model(tmp_path, "m", 1, double_model())
        _config(tmp_path, "m", f"sha256:\n  1: '{'0' * 64}'\n")
        entry = _loader(executor).load(tmp_path).find("m")
        assert entry.state is State.UNAVAILABLE
        assert entry.reason.startswith(f"{path}: ")
        assert "does not match the pinned" in entry.reason

    def test_max_batch_size_needs_an_open_first_dim(self, tmp_path: Path, executor: Any) -> None:
        """max_batch_size on a model with a fixed first dimension is UNAVAILABLE, saying why."""
        write_model(tmp_path, "fixed", 1, double_model((1, 3)))
        _config(tmp_path, "fixed", "max_batch_size: 8\n")
        entry = _loader(executor).load(tmp_path).find("fixed")
        assert entry.state is State.UNAVAILABLE
        assert "max_batch_size is set but not every tensor has an open first dimension" in (
            entry.reason
        )

    def test_max_batch_size_turns_batching_on(self, tmp_path: Path, executor: Any) -> None:
        """max_batch_size on a model with an open first dimension gives a batching runner."""
        write_model(tmp_path, "m", 1, double_model())
        _config(tmp_path, "m", "max_batch_size: 8\n")
        runner = _loader(executor).load(tmp_path).get("m").runner
        assert runner is not None
        assert runner.batching

    def test_model_folder_without_versions(self, tmp_path: Path, executor: Any) -> None:
        """A model folder with no numeric version folder is a model error, not a crash."""
        (tmp_path / "empty" / "notes").mkdir(parents=True)
        write_model(tmp_path, "good", 1, double_model())
        repo = _loader(executor).load(tmp_path)
        assert repo.models["empty"].error.startswith("no numeric version folder")
        with pytest.raises(ModelNotReady):
            repo.find("empty")
        assert any(f.startswith("empty: ") for f in repo.failures)
        assert repo.get("good").ready

    def test_two_folders_naming_one_version(self, tmp_path: Path, executor: Any) -> None:
        """Folders '1' and '01' both name version 1: it is UNAVAILABLE naming both, not served
        from whichever the file system happened to list last; other versions still load."""
        write_model(tmp_path, "m", 1, double_model())
        write_model(tmp_path, "m", 2, double_model())
        (tmp_path / "m" / "01").mkdir()
        (tmp_path / "m" / "01" / "model.onnx").write_bytes(
            (tmp_path / "m/1/model.onnx").read_bytes()
        )
        repo = _loader(executor).load(tmp_path)
        entry = repo.find("m", "1")
        assert entry.state is State.UNAVAILABLE
        assert "'01' and '1'" in entry.reason
        assert "version 1" in entry.reason
        assert repo.get("m").version == 2

    def test_bad_model_config_is_a_model_error(self, tmp_path: Path, executor: Any) -> None:
        """A config.yaml error marks the model failed and names the key; others still load."""
        write_model(tmp_path, "m", 1, double_model())
        _config(tmp_path, "m", "max_batch: 4\n")
        write_model(tmp_path, "good", 1, double_model())
        repo = _loader(executor).load(tmp_path)
        assert "max_batch: unknown key" in repo.models["m"].error
        assert repo.models["m"].versions == {}
        assert repo.get("good").ready
        with pytest.raises(ModelNotReady) as info:  # the caller learns why, on one line
            repo.get("m")
        assert str(tmp_path / "m" / "config.yaml") in info.value.message
        assert "max_batch: unknown key" in info.value.message
        assert "\n" not in info.value.message

    def test_hidden_and_underscore_folders_are_skipped(self, tmp_path: Path, executor: Any) -> None:
        """Folders starting with '.' or '_' and loose files are not models."""
        write_model(tmp_path, "m", 1, double_model())
        (tmp_path / ".git").mkdir()
        (tmp_path / "__pycache__").mkdir()
        (tmp_path / "README.md").write_text("hello", encoding="utf-8")
        repo = _loader(executor).load(tmp_path)
        assert list(repo.models) == ["m"]
        assert repo.ready

    def test_a_model_removed_while_the_repository_loads_is_left_out(
        self, tmp_path: Path, executor: Any
    ) -> None:
        """A model folder deleted while the models before it load (a reload as the operator
        edits the repository) is simply not there: the load does not fail as a whole."""
        write_model(tmp_path, "a", 1, double_model())
        write_model(tmp_path, "b", 1, double_model())
        write_model(tmp_path, "c", 1, double_model())
        real = CountingBuilder()

        def build(data: bytes, threads: int, chosen: list[tuple[str, dict[str, Any]]]) -> Any:
            shutil.rmtree(tmp_path / "b", ignore_errors=True)  # while 'a' is being built
            return real(data, threads, chosen)

        repo = _loader(executor, build).load(tmp_path)
        assert sorted(repo.models) == ["a", "c"]
        assert repo.ready

    def test_repository_must_be_a_directory(self, tmp_path: Path, executor: Any) -> None:
        """A repository path that is not a directory is a ConfigError naming it."""
        with pytest.raises(ConfigError) as info:
            _loader(executor).load(tmp_path / "absent")
        assert info.value.source == str(tmp_path / "absent")

    def test_warmup_runs_twice_with_open_dims_as_one(self, tmp_path: Path, executor: Any) -> None:
        """Warm-up runs the model on zeros, open dimensions set to 1: once to initialise, once
        to measure the run time that decides whether the model may run inline."""
        write_model(tmp_path, "m", 1, double_model(("N", 3)))
        build = CountingBuilder()
        entry = _loader(executor, build).load(tmp_path).get("m")
        assert entry.ready
        assert build.runs == 2
        assert entry.runner is not None
        assert entry.runner.run_ns < float("inf")
        assert build.warmup_feeds == [{"x": ((1, 3), np.dtype(np.float32))}] * 2

    def test_warmup_off(self, tmp_path: Path, executor: Any) -> None:
        """warmup: false loads the model without running it."""
        write_model(tmp_path, "m", 1, double_model())
        _config(tmp_path, "m", "warmup: false\n")
        build = CountingBuilder()
        assert _loader(executor, build).load(tmp_path).get("m").ready
        assert build.runs == 0

    def test_provider_fallback_is_recorded(self, tmp_path: Path, executor: Any) -> None:
        """A preferred provider that fails to start falls back to CPU, and the failure is kept."""
        write_model(tmp_path, "m", 1, double_model())
        _config(tmp_path, "m", f"execution_providers: [{OPENVINO}]\n")
        build = CountingBuilder(failing=(OPENVINO,))
        entry = _loader(executor, build, available=(OPENVINO, CPU)).load(tmp_path).get("m")
        assert entry.provider == CPU
        assert entry.provider_failures == [Attempt(OPENVINO, f"{OPENVINO} could not start")]

    def test_misspelt_provider_is_an_error(self, tmp_path: Path, executor: Any) -> None:
        """A provider name onnxruntime does not know makes the version UNAVAILABLE, naming the
        config file, the key and the name, instead of a silent fall back to CPU."""
        write_model(tmp_path, "m", 1, double_model())
        _config(tmp_path, "m", "execution_providers: [CUDAExcutionProvider]\n")
        entry = _loader(executor, available=(CPU,)).load(tmp_path).find("m")
        assert entry.state is State.UNAVAILABLE
        for word in ("execution_providers", str(tmp_path / "m" / "config.yaml"), "CUDAExcution"):
            assert word in entry.reason

    def test_label_output_must_be_an_output(self, tmp_path: Path, executor: Any) -> None:
        """label_output naming no output of the graph is an error naming the file and key, not
        a classification that silently comes back without labels."""
        write_model(tmp_path, "m", 1, double_model())
        _config(tmp_path, "m", "labels: [a, b]\nlabel_output: scores\n")
        entry = _loader(executor).load(tmp_path).find("m")
        assert entry.state is State.UNAVAILABLE
        for word in ("label_output", str(tmp_path / "m" / "config.yaml"), "'scores'", "y"):
            assert word in entry.reason

    def test_site_restriction_applies(self, tmp_path: Path, executor: Any) -> None:
        """models.execution_providers on the site narrows what a model may use."""
        write_model(tmp_path, "m", 1, double_model())
        _config(tmp_path, "m", f"execution_providers: [{OPENVINO}]\n")
        build = CountingBuilder()
        settings = ModelSettings(inference_threads=1, execution_providers=(CPU,))
        loader = Loader(settings, executor, (OPENVINO, CPU), build)
        entry = loader.load(tmp_path).get("m")
        assert entry.provider == CPU
        assert entry.provider_failures == []

    def test_real_available_providers(self, tmp_path: Path, executor: Any) -> None:
        """With what onnxruntime reports as available, a model loads on some provider."""
        write_model(tmp_path, "m", 1, double_model())
        loader = Loader(ModelSettings(inference_threads=1), executor, ort.get_available_providers())
        entry = loader.load(tmp_path).get("m")
        assert entry.provider in ort.get_available_providers()
