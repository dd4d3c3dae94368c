"""Typed, frozen site settings.

A site config is YAML; every key is optional and the embedded defaults describe an edge site that
serves the bundled demo models locally on 127.0.0.1:8000. Relative paths in a file are resolved
against the file's folder, so a config and its model repository can move together.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field

from router import yamlconf
from router.yamlconf import Strict

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class Tier(StrEnum):
    EDGE = "edge"
    REGIONAL = "regional"
    CENTRAL = "central"


class SiteSettings(Strict):
    id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")] = (
        "edge-local"
    )
    tier: Tier = Tier.EDGE


class ServerSettings(Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    # How long in-flight requests may take to finish after SIGTERM/SIGINT.
    drain_timeout_s: PositiveFloat = 10.0
    max_body_bytes: PositiveInt = 64 * 1024 * 1024
    # Budget for requests that do not state one; a request past it is dropped before it runs.
    default_deadline_ms: PositiveInt = 30_000


class ModelSettings(Strict):
    # None means the demo repository bundled with the program.
    repository: Path | None = None
    # Threads that run inference off the event loop, shared by every model.
    inference_threads: PositiveInt = Field(default_factory=lambda: max(1, os.cpu_count() or 1))
    # Requests queued per model before new ones get 503 + Retry-After.
    max_queue_size: PositiveInt = 256
    # Restrict or reorder onnxruntime execution providers for every model on this site.
    execution_providers: tuple[str, ...] = ()


class LoggingSettings(Strict):
    level: Annotated[str, Field(pattern=r"^(?i:debug|info|warning|error)$")] = "info"


class Settings(Strict):
    site: SiteSettings = SiteSettings()
    server: ServerSettings = ServerSettings()
    models: ModelSettings = ModelSettings()
    logging: LoggingSettings = LoggingSettings()


def load_settings(path: Path | None) -> Settings:
    """The embedded default when `path` is None, else the file's settings over the defaults."""
    if path is None:
        return Settings()
    settings = yamlconf.load(path, Settings)
    repo = settings.models.repository
    if repo is not None and not repo.is_absolute():
        models = settings.models.model_copy(update={"repository": path.parent / repo})
        settings = settings.model_copy(update={"models": models})
    return settings
