"""router.resources.state_dir: where a site keeps its audit trail, spool and policy state when
its config names no other place."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest

from router.errors import ConfigError
from router.resources import state_dir


@pytest.fixture
def no_explicit_dir(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("LAYER_ROUTER_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    return monkeypatch


def test_a_user_without_a_home_gets_a_clear_error(no_explicit_dir: pytest.MonkeyPatch) -> None:
    """An arbitrary container uid (no $HOME, no passwd entry) is told to set the variable,
    instead of start-up dying with a RuntimeError traceback."""

    def unknown_user(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    no_explicit_dir.delenv("HOME", raising=False)
    no_explicit_dir.setattr(pwd, "getpwuid", unknown_user)
    with pytest.raises(ConfigError, match=r"LAYER_ROUTER_STATE_DIR") as info:
        state_dir()
    assert "no home directory" in str(info.value)


def test_a_relative_xdg_state_home_is_ignored(
    no_explicit_dir: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The XDG spec calls a relative $XDG_STATE_HOME invalid: the default under the home
    folder is used, not a folder relative to wherever the router was started."""
    no_explicit_dir.setenv("HOME", str(tmp_path))
    no_explicit_dir.setenv("XDG_STATE_HOME", "relative/state")
    assert state_dir() == tmp_path / ".local" / "state" / "layer-router"
    no_explicit_dir.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir() == tmp_path / "xdg" / "layer-router"


def test_the_explicit_variable_wins(no_explicit_dir: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$LAYER_ROUTER_STATE_DIR is used as given, whatever the XDG variable says."""
    no_explicit_dir.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    no_explicit_dir.setenv("LAYER_ROUTER_STATE_DIR", str(tmp_path / "mine"))
    assert state_dir() == tmp_path / "mine"
