"""Residency rules that name endpoint hosts (`endpoints:` in residency.yaml): globs, matched in
lower case against every endpoint of a destination, failing closed when a host is unknown."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.errors import ConfigError
from router.policy.bundle import PolicyBundle, load_bundle
from router.policy.residency import permits
from router.settings.upstream import EndpointSettings

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "policies" / "default"


def bundle_with(tmp_path: Path, personal_endpoints: Any) -> PolicyBundle:
    folder = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, folder)
    residency = yaml.safe_load((folder / "residency.yaml").read_text())
    for rule in residency["rules"]:
        if rule["data_class"] == "personal":
            rule["endpoints"] = personal_endpoints
    (folder / "residency.yaml").write_text(yaml.safe_dump(residency))
    return load_bundle(folder)


def personal_to(bundle: PolicyBundle, *hosts: str) -> bool:
    return permits(
        bundle,
        declared="personal",
        entities=frozenset(),
        tier="central",
        jurisdictions=frozenset(),
        origin="",
        hosts=frozenset(hosts),
    )


@pytest.mark.parametrize(
    ("hosts", "allowed"),
    [
        (("llm.eu.example.com",), True),
        (("a.b.eu.example.com",), True),  # a glob's * spans dots, as in fnmatch
        (("llm.us.example.com",), False),
        (("llm.eu.example.com", "llm.us.example.com"), False),  # every endpoint must pass
        (("10.0.0.7",), True),
        ((), False),  # no host known: fail closed
    ],
)
def test_globs_over_every_endpoint(tmp_path: Path, hosts: tuple[str, ...], allowed: bool) -> None:
    """A destination passes only when each of its endpoint hosts matches one of the globs."""
    bundle = bundle_with(tmp_path, ["*.EU.example.com", "10.0.0.7"])
    assert personal_to(bundle, *hosts) is allowed


def test_rules_without_endpoints_allow_any_host(tmp_path: Path) -> None:
    """The default ("any"): endpoints play no part, as before the key existed."""
    bundle = load_bundle(DEFAULT_BUNDLE)
    assert personal_to(bundle, "anywhere.example.org")
    assert personal_to(bundle)


def test_an_empty_pattern_is_refused(tmp_path: Path) -> None:
    """An empty host pattern is a bundle error naming the key, not a rule matching nothing."""
    with pytest.raises(ConfigError, match="endpoints"):
        bundle_with(tmp_path, [""])


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://LLM.Example.com:8443/v1", "llm.example.com"),
        ("https://[::1]:9000", "::1"),
        ("http://127.0.0.1", "127.0.0.1"),
    ],
)
def test_endpoint_host_is_what_rules_match(url: str, host: str) -> None:
    """An endpoint's host: lower case, without port, path or IPv6 brackets."""
    assert EndpointSettings(url=url).host == host
