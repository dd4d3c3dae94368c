"""Where the data that ships with the program lives: in the wheel, or in a source checkout."""

from __future__ import annotations

import os
from pathlib import Path

from router.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent


def bundled(name: str) -> Path:
    """A folder bundled into the wheel (see pyproject's force-include), else the checkout's."""
    installed = _PACKAGE / "_bundled" / name
    return installed if installed.is_dir() else _PACKAGE.parent / name


def demo_model_repository() -> Path:
    return bundled("edge_models")


def state_dir() -> Path:
    """Where a site keeps what must survive a restart (audit trail, spool) unless its config
    says otherwise: $LAYER_ROUTER_STATE_DIR, else $XDG_STATE_HOME/layer-router, else
    ~/.local/state/layer-router (the XDG base directory default)."""
    explicit = os.environ.get("LAYER_ROUTER_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec: a relative path is invalid and ignored
        return Path(xdg) / "layer-router"
    try:
        home = Path.home()
    except (RuntimeError, KeyError):
        # A container user with neither $HOME nor a passwd entry (an arbitrary uid).
        raise ConfigError(
            "$LAYER_ROUTER_STATE_DIR",
            [
                "not set, and this user has no home directory for the default state directory: "
                "set it (or $XDG_STATE_HOME) to a writable folder"
            ],
        ) from None
    return home / ".local" / "state" / "layer-router"


def audit_path(configured: Path | None) -> Path:
    return configured if configured is not None else state_dir() / "audit"


def default_policy_bundle() -> Path:
    return bundled("policies") / "default"
