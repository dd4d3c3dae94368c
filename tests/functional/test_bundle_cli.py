"""`layer-router bundle keygen|build|sign|verify` as an operator runs them."""

from __future__ import annotations

from pathlib import Path

from test_serve_process import run_cli

from router.resources import default_policy_bundle


def test_keygen_build_sign_verify(tmp_path: Path) -> None:
    """A bundle built unsigned fails verification (exit 1), passes once signed, and fails
    again against a key that did not sign it."""
    keys = tmp_path / "keys" / "central"
    keys.parent.mkdir()
    assert run_cli("bundle", "keygen", keys).returncode == 0
    assert (keys.parent / "central.key").stat().st_mode & 0o077 == 0  # owner-only
    archive = tmp_path / "bundle.tar.gz"
    assert run_cli("bundle", "build", default_policy_bundle(), "-o", archive).returncode == 0
    public = keys.parent / "central.pub"
    unsigned = run_cli("bundle", "verify", archive, "--public-key", public)
    assert unsigned.returncode == 1
    assert "not signed" in unsigned.stderr
    signing = run_cli("bundle", "sign", archive, "--signing-key", keys.parent / "central.key")
    assert signing.returncode == 0
    verified = run_cli("bundle", "verify", archive, "--public-key", public)
    assert verified.returncode == 0
    assert "revision" in verified.stdout
    assert run_cli("bundle", "keygen", tmp_path / "other").returncode == 0
    wrong = run_cli("bundle", "verify", archive, "--public-key", tmp_path / "other.pub")
    assert wrong.returncode == 1
    assert "not a configured key" in wrong.stderr


def test_build_signs_in_one_step_and_keygen_never_overwrites(tmp_path: Path) -> None:
    """`build --signing-key` gives a verifiable bundle; keygen refuses to replace a key."""
    assert run_cli("bundle", "keygen", tmp_path / "k").returncode == 0
    archive = tmp_path / "b.tar.gz"
    built = run_cli(
        "bundle",
        "build",
        default_policy_bundle(),
        "-o",
        archive,
        "--signing-key",
        tmp_path / "k.key",
    )
    assert built.returncode == 0
    assert run_cli("bundle", "verify", archive, "--public-key", tmp_path / "k.pub").returncode == 0
    again = run_cli("bundle", "keygen", tmp_path / "k")
    assert again.returncode == 2
