"""TLS contexts: bad certificate files are ConfigErrors naming the key at start-up, and
reload rebuilds a context only when its files changed, keeping the old one when the new
files are bad."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
import trustme

from router.app import build_app
from router.cli import main
from router.errors import ConfigError
from router.settings import ListenerTlsSettings, Settings, TlsSettings, load_settings
from router.upstreams.tls import ClientTls, ListenerTls, TlsContexts


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def write(path: Path, blob: trustme.Blob) -> Path:
    blob.write_to_path(str(path))
    return path


def leaf_files(folder: Path, ca: trustme.CA, name: str = "site") -> tuple[Path, Path]:
    leaf = ca.issue_cert(f"{name}.example")
    cert = write(folder / f"{name}.pem", leaf.cert_chain_pems[0])
    key = write(folder / f"{name}.key", leaf.private_key_pem)
    return cert, key


def bump_mtime(path: Path) -> None:
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))


class TestClientTlsErrors:
    def test_missing_ca_file_names_the_key(self, tmp_path: Path) -> None:
        """An unreadable ca_file is a ConfigError naming the cluster and the key."""
        with pytest.raises(ConfigError) as caught:
            ClientTls(TlsSettings(ca_file=tmp_path / "nope.pem"), "upstreams.c.tls")
        assert caught.value.source == "upstreams.c.tls"
        assert "ca_file: cannot read" in str(caught.value)

    def test_garbage_ca_file(self, tmp_path: Path) -> None:
        """A ca_file without a certificate in it is rejected."""
        (tmp_path / "ca.pem").write_text("not a certificate\n")
        with pytest.raises(ConfigError, match="ca_file: no valid CA"):
            ClientTls(TlsSettings(ca_file=tmp_path / "ca.pem"), "c")

    def test_key_that_does_not_match(self, tmp_path: Path, ca: trustme.CA) -> None:
        """A client certificate with another certificate's key is rejected."""
        cert, _ = leaf_files(tmp_path, ca, "a")
        _, other_key = leaf_files(tmp_path, ca, "b")
        with pytest.raises(ConfigError, match="cert_file/key_file"):
            ClientTls(TlsSettings(cert_file=cert, key_file=other_key), "c")

    def test_key_without_cert(self, tmp_path: Path, ca: trustme.CA) -> None:
        """key_file alone is a mistake, not silently ignored."""
        _, key = leaf_files(tmp_path, ca)
        with pytest.raises(ConfigError, match="key_file: given without cert_file"):
            ClientTls(TlsSettings(key_file=key), "c")

    def test_defaults_use_system_verification(self) -> None:
        """No files and verify on: aiohttp's default verifying context (True)."""
        assert ClientTls(TlsSettings(), "c").context is True

    def test_app_start_fails_on_bad_listener_cert(self, tmp_path: Path) -> None:
        """build_app refuses a listener certificate that cannot be read."""
        settings = Settings.model_validate({"server": {"tls": {"cert_file": tmp_path / "x"}}})
        with pytest.raises(ConfigError, match=r"server\.tls"):
            build_app(settings)


class TestReload:
    def test_unchanged_files_are_not_reread(self, tmp_path: Path, ca: trustme.CA) -> None:
        """reload() is a few stats when nothing changed: the context object stays."""
        tls = ClientTls(TlsSettings(ca_file=write(tmp_path / "ca.pem", ca.cert_pem)), "c")
        before = tls.context
        assert tls.reload() is False
        assert tls.context is before

    def test_changed_ca_rebuilds_the_context(self, tmp_path: Path, ca: trustme.CA) -> None:
        """A rotated CA file gives a new context that trusts the new CA."""
        ca_file = write(tmp_path / "ca.pem", ca.cert_pem)
        tls = ClientTls(TlsSettings(ca_file=ca_file), "c")
        before = tls.context
        rotated = trustme.CA()
        write(ca_file, rotated.cert_pem)
        bump_mtime(ca_file)
        assert tls.reload() is True
        assert tls.context is not before
        assert isinstance(tls.context, ssl.SSLContext)
        subjects = [c["subject"] for c in tls.context.get_ca_certs()]
        assert len(subjects) == 1
        assert subjects != [c["subject"] for c in before.get_ca_certs()]  # type: ignore[union-attr]

    def test_bad_new_file_keeps_the_old_context(self, tmp_path: Path, ca: trustme.CA) -> None:
        """A broken rotation is reported and the working context stays in use."""
        ca_file = write(tmp_path / "ca.pem", ca.cert_pem)
        contexts = TlsContexts(None, {"c": ClientTls(TlsSettings(ca_file=ca_file), "c")})
        before = contexts.clients["c"].context
        ca_file.write_text("truncated")
        bump_mtime(ca_file)
        problems = contexts.reload()
        assert len(problems) == 1
        assert "ca_file" in problems[0]
        assert contexts.clients["c"].context is before

    def test_listener_updates_in_place(self, tmp_path: Path, ca: trustme.CA) -> None:
        """The listener's context object (bound to the socket) stays; its certificate changes."""
        cert, key = leaf_files(tmp_path, ca)
        listener = ListenerTls(ListenerTlsSettings(cert_file=cert, key_file=key))
        context = listener.context
        new_cert, new_key = leaf_files(tmp_path, ca, "renewed")
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        bump_mtime(cert)
        assert listener.reload() is True
        assert listener.context is context


def test_config_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    """Certificate paths in a config file resolve against the file's folder."""
    config = tmp_path / "site.yaml"
    config.write_text(
        "server:\n  tls: {cert_file: certs/site.pem}\n"
        "upstreams:\n"
        "  - name: r\n    tier: regional\n    endpoints: [{url: 'https://r.example'}]\n"
        "    tls: {ca_file: certs/ca.pem, cert_file: /abs/client.pem}\n"
        "spool:\n  tls: {ca_file: central-ca.pem}\n"
        "policy:\n  source: {url: 'https://hq.example/b.tar.gz', tls: {ca_file: bundles-ca.pem}}\n"
        "  public_keys: [k.pub]\n"
    )
    settings = load_settings(config)
    assert settings.server.tls is not None
    assert settings.server.tls.cert_file == tmp_path / "certs/site.pem"
    assert settings.upstreams[0].tls.ca_file == tmp_path / "certs/ca.pem"
    assert settings.upstreams[0].tls.cert_file == Path("/abs/client.pem")
    assert settings.spool.tls.ca_file == tmp_path / "central-ca.pem"
    assert settings.policy.source is not None
    assert settings.policy.source.tls.ca_file == tmp_path / "bundles-ca.pem"


def test_check_command_rejects_a_bad_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`layer-router check` reads the certificate files too: a missing one is exit 2."""
    config = tmp_path / "site.yaml"
    config.write_text(
        "upstreams:\n"
        "  - name: r\n    tier: regional\n    endpoints: [{url: 'https://r.example'}]\n"
        "    tls: {ca_file: missing.pem}\n"
    )
    assert main(["check", str(config)]) == 2
    assert "upstreams.r.tls" in capsys.readouterr().err
