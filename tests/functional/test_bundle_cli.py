"""`layer-router bundle keygen|build|sign|verify` as an operator runs them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_serve_process import run_cli

from router.policy.archive import unpack
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


def test_readme_commands_work_as_written(tmp_path: Path) -> None:
    """keygen makes its folder (`keygen keys/central` in a fresh checkout), and an output
    that cannot be written is a one-line error with exit 2, not a traceback."""
    keys = tmp_path / "keys" / "central"
    assert run_cli("bundle", "keygen", keys).returncode == 0
    assert (tmp_path / "keys" / "central.pub").is_file()
    unwritable = run_cli("bundle", "keygen", "/proc/layer-router-test")
    assert unwritable.returncode == 2
    assert "Traceback" not in unwritable.stderr
    built = run_cli("bundle", "build", default_policy_bundle(), "-o", "/proc/b.tar.gz")
    assert built.returncode == 2
    assert "Traceback" not in built.stderr


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


def test_check_verifies_a_local_bundle_against_the_configured_keys(tmp_path: Path) -> None:
    """`check` refuses an unsigned bundle when keys are configured (exit 2) and accepts the
    same bundle once signed."""
    assert run_cli("bundle", "keygen", tmp_path / "k").returncode == 0
    archive = tmp_path / "b.tar.gz"
    assert run_cli("bundle", "build", default_policy_bundle(), "-o", archive).returncode == 0
    config = tmp_path / "site.yaml"
    config.write_text("policy: {source: {path: b.tar.gz}, public_keys: [k.pub]}\n")
    refused = run_cli("check", config)
    assert refused.returncode == 2
    assert "not signed" in refused.stderr
    assert run_cli("bundle", "sign", archive, "--signing-key", tmp_path / "k.key").returncode == 0
    accepted = run_cli("check", config)
    assert accepted.returncode == 0, accepted.stderr
    passed = re.search(r"(\d+) policy cases passed", accepted.stdout)
    assert passed is not None
    assert int(passed.group(1)) > 0  # the archive's cases ran


def test_build_and_sign_set_the_serial(tmp_path: Path) -> None:
    """`--serial N` writes N into the manifest (its comments kept) before signing; `sign
    --serial` replaces it, which is how old content is re-issued; a negative one is refused."""
    assert run_cli("bundle", "keygen", tmp_path / "k").returncode == 0
    built, again = tmp_path / "b.tar.gz", tmp_path / "again.tar.gz"
    signing = ("--signing-key", tmp_path / "k.key")
    result = run_cli(
        "bundle", "build", default_policy_bundle(), "-o", built, "--serial", "3", *signing
    )
    assert result.returncode == 0, result.stderr
    assert "serial 3" in result.stdout
    verified = run_cli("bundle", "verify", built, "--public-key", tmp_path / "k.pub")
    assert "revision 2026-11-27.1 serial 3," in verified.stdout
    assert run_cli("bundle", "sign", built, "--serial", "4", "-o", again, *signing).returncode == 0
    verified = run_cli("bundle", "verify", again, "--public-key", tmp_path / "k.pub")
    assert "serial 4," in verified.stdout
    manifest = unpack(again.read_bytes())["manifest.yaml"].decode()
    assert manifest.count("\nserial:") == 1
    assert manifest.startswith("# A policy bundle")
    negative = run_cli("bundle", "sign", built, "--serial", "-1", *signing)
    assert negative.returncode == 2
    assert "invalid serial value" in negative.stderr


def test_a_public_or_protected_key_given_as_signing_key_is_a_one_line_error(
    tmp_path: Path,
) -> None:
    """`--signing-key k.pub` (the wrong half of the pair) or a passphrase-protected key is a
    one-line error naming the file, exit 2, not a traceback."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    assert run_cli("bundle", "keygen", tmp_path / "k").returncode == 0
    protected = tmp_path / "protected.key"
    protected.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    for key in (tmp_path / "k.pub", protected):
        built = run_cli(
            "bundle", "build", default_policy_bundle(), "-o", tmp_path / "b.tar.gz",
            "--signing-key", key,
        )  # fmt: skip
        assert built.returncode == 2, built.stderr
        assert "Traceback" not in built.stderr
        assert str(key) in built.stderr
        assert not (tmp_path / "b.tar.gz").exists()


def test_build_refuses_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    """A folder without manifest.yaml (a typo'd path, the keys folder) is refused with exit 2
    instead of packing whatever it holds into an archive no router would load."""
    assert run_cli("bundle", "keygen", tmp_path / "keys" / "k").returncode == 0
    built = run_cli("bundle", "build", tmp_path / "keys", "-o", tmp_path / "b.tar.gz")
    assert built.returncode == 2
    assert "manifest.yaml" in built.stderr
    assert not (tmp_path / "b.tar.gz").exists()


def test_an_output_that_is_a_folder_is_named_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    """`build -o FOLDER` names the operator's output (not an internal temporary name) and
    leaves no half-written temporary file beside it; keygen over a key names the key."""
    (tmp_path / "out").mkdir()
    built = run_cli("bundle", "build", default_policy_bundle(), "-o", tmp_path / "out")
    assert built.returncode == 2
    assert built.stderr.strip() == f"error: {tmp_path / 'out'}: Is a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert run_cli("bundle", "keygen", tmp_path / "k").returncode == 0
    again = run_cli("bundle", "keygen", tmp_path / "k")
    assert again.stderr.strip() == f"error: {tmp_path / 'k.key'}: already exists (not overwritten)"


def test_check_names_a_bundle_file_that_is_not_an_archive(tmp_path: Path) -> None:
    """`policy.bundle` naming a file that is no tar.gz (the site config itself, by a slip) is
    refused with exit 2 and the file's path, not an anonymous 'not a valid tar.gz'."""
    config = tmp_path / "site.yaml"
    config.write_text(f"policy:\n  bundle: {config}\n", encoding="utf-8")
    done = run_cli("check", config)
    assert done.returncode == 2
    assert f"{config}: bundle is not a valid tar.gz archive" in done.stderr


def test_sign_refuses_an_archive_that_is_not_a_bundle(tmp_path: Path) -> None:
    """Signing a tar.gz without manifest.yaml would vouch for something no router loads:
    refused with exit 2 naming the archive, and the archive is left as it was."""
    from router.policy.archive import pack

    archive = tmp_path / "other.tar.gz"
    archive.write_bytes(pack({"notes.txt": b"not a bundle\n"}))
    before = archive.read_bytes()
    assert run_cli("bundle", "keygen", tmp_path / "k").returncode == 0
    signed = run_cli("bundle", "sign", archive, "--signing-key", tmp_path / "k.key")
    assert signed.returncode == 2
    assert f"no manifest.yaml in {archive}" in signed.stderr
    assert archive.read_bytes() == before


def test_keygen_refuses_a_prefix_that_names_no_file(tmp_path: Path) -> None:
    """`keygen ""` was a traceback and `keygen keys/` wrote keys.key beside the folder: both
    are argument errors (exit 2) naming the prefix, and nothing is written."""
    for prefix in ("", f"{tmp_path}/keys/", "."):
        made = run_cli("bundle", "keygen", prefix)
        assert made.returncode == 2, made.stderr
        assert "Traceback" not in made.stderr
        assert f"invalid key prefix (a file name stem such as keys/site) value: '{prefix}'" in (
            made.stderr
        )
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_names_no_file_is_an_argument_error(tmp_path: Path) -> None:
    """`-o ""` was a traceback and `-o out/` wrote a file named `out`: both are argument
    errors (exit 2) and nothing is written."""
    for output in ("", f"{tmp_path}/out/"):
        built = run_cli("bundle", "build", default_policy_bundle(), "-o", output)
        assert built.returncode == 2, built.stderr
        assert "Traceback" not in built.stderr
        assert "invalid output file" in built.stderr
    assert list(tmp_path.iterdir()) == []


def test_check_reads_the_files_a_remote_source_needs(tmp_path: Path) -> None:
    """With a `url` source `check` cannot fetch the bundle, but the public keys, the source's
    TLS files and the pseudonym secret are read as `serve` reads them: a missing one is exit 2
    naming it, not `ok` for a config that `serve` refuses."""
    assert run_cli("bundle", "keygen", tmp_path / "k").returncode == 0
    config = tmp_path / "site.yaml"
    url = "url: https://central.example/b.tar.gz"
    cases = {
        "missing.pub": f"policy: {{source: {{{url}}}, public_keys: [missing.pub]}}\n",
        "central-ca.pem": (
            f"policy: {{source: {{{url}, tls: {{ca_file: central-ca.pem}}}},"
            " public_keys: [k.pub]}\n"
        ),
        "secret.key": (
            f"policy: {{source: {{{url}}}, public_keys: [k.pub], secret_file: secret.key}}\n"
        ),
    }
    for missing, text in cases.items():
        config.write_text(text)
        done = run_cli("check", config)
        assert done.returncode == 2, (missing, done.stdout)
        assert missing in done.stderr


def test_verify_leaves_no_unpacked_copy_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bundle verify` unpacks the bundle to load it; the copy was left in the temporary
    folder on every run (accepted or rejected), one bundle's worth each time."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    assert run_cli("bundle", "keygen", tmp_path / "k").returncode == 0
    archive = tmp_path / "b.tar.gz"
    signing = ("--signing-key", tmp_path / "k.key")
    assert (
        run_cli("bundle", "build", default_policy_bundle(), "-o", archive, *signing).returncode == 0
    )
    assert run_cli("bundle", "verify", archive, "--public-key", tmp_path / "k.pub").returncode == 0
    assert run_cli("bundle", "keygen", tmp_path / "other").returncode == 0
    wrong = run_cli("bundle", "verify", archive, "--public-key", tmp_path / "other.pub")
    assert wrong.returncode == 1
    assert list(scratch.iterdir()) == []


def test_sign_and_verify_name_a_file_that_is_not_an_archive(tmp_path: Path) -> None:
    """`bundle sign` or `verify` given a file that is no tar.gz said only 'bundle is not a
    valid tar.gz archive'; the error names the file, exit 2."""
    assert run_cli("bundle", "keygen", tmp_path / "k").returncode == 0
    text = tmp_path / "site.yaml"
    text.write_text("server: {port: 8000}\n")
    for args in (
        ("verify", text, "--public-key", tmp_path / "k.pub"),
        ("sign", text, "--signing-key", tmp_path / "k.key"),
    ):
        result = run_cli("bundle", *args)
        assert result.returncode == 2
        assert f"{text}: bundle is not a valid tar.gz archive" in result.stderr
