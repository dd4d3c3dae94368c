"""The optional per-model `config.yaml` of a model repository entry (Triton's vocabulary)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator

from router import yamlconf
from router.yamlconf import Strict

CONFIG_FILE = "config.yaml"


class ProviderChoice(Strict):
    name: Annotated[str, Field(min_length=1)]
    options: dict[str, Any] = {}


class DynamicBatching(Strict):
    max_queue_delay_microseconds: Annotated[int, Field(ge=0, le=1_000_000)] = 100
    # None: the site's `models.max_queue_size`.
    max_queue_size: Annotated[int, Field(gt=0)] | None = None


class ModelConfig(Strict):
    description: str = ""
    labels: tuple[str, ...] = ()
    labels_file: str | None = None
    label_output: str | None = None  # None: the first output
    max_batch_size: Annotated[int, Field(ge=0)] = 0  # 0: no dynamic batching
    dynamic_batching: DynamicBatching = DynamicBatching()
    instance_count: Annotated[int, Field(gt=0, le=64)] = 1
    intra_op_threads: Annotated[int, Field(ge=0, le=256)] = 1  # 0: onnxruntime's default
    execution_providers: tuple[ProviderChoice, ...] = ()
    sha256: dict[int, Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]] = {}
    warmup: bool = True

    @field_validator("execution_providers", mode="before")
    @classmethod
    def _names_as_choices(cls, value: Any) -> Any:
        """Accept plain provider names as well as {name, options} entries."""
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value


def load_model_config(model_dir: Path) -> ModelConfig:
    path = model_dir / CONFIG_FILE
    if not path.exists():
        return ModelConfig()
    config = yamlconf.load(path, ModelConfig)
    if config.labels_file is None:
        return config
    labels_path = model_dir / config.labels_file
    try:
        lines = labels_path.read_text(encoding="utf-8-sig").splitlines()  # a BOM is no label
    except (OSError, UnicodeDecodeError) as exc:
        from router.errors import ConfigError

        raise ConfigError(str(path), [f"labels_file: cannot read {labels_path}: {exc}"]) from None
    # A blank line in the middle is a label too: dropping it would shift every later index.
    labels = [line.strip() for line in lines]
    while labels and not labels[-1]:
        labels.pop()
    return config.model_copy(update={"labels": tuple(labels)})
