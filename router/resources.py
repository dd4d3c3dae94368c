"""Where the data that ships with the program lives: in the wheel, or in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def bundled(name: str) -> Path:
    """A folder bundled into the wheel (see pyproject's force-include), else the checkout's."""
    installed = _PACKAGE / "_bundled" / name
    return installed if installed.is_dir() else _PACKAGE.parent / name


def demo_model_repository() -> Path:
    return bundled("edge_models")


def default_policy_bundle() -> Path:
    return bundled("policies") / "default"
