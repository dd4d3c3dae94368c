"""`layer-router check` on a policy bundle: every mistake is an error naming file and key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from router.errors import ConfigError
from router.policy.bundle import load_bundle
from router.resources import default_policy_bundle


def _bundle_with(tmp_path: Path, file: str, old: str, new: str) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), bundle)
    text = (bundle / file).read_text(encoding="utf-8")
    assert old in text
    (bundle / file).write_text(text.replace(old, new, 1), encoding="utf-8")
    return bundle


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("default: internal", "default: intrnal", "default"),
        ("EMAIL: personal", "EMAIL: persnal", "entities.EMAIL"),
        ("secret]", "secret, personal]", "classes"),
        ("secret]", "secret, Personal]", "classes"),  # headers name classes in any case
    ],
)
def test_data_classes_mistakes_name_their_key(
    tmp_path: Path, old: str, new: str, named: str
) -> None:
    """An unknown class as the default or an entity's, or a class listed twice, is reported
    at its key in data_classes.yaml."""
    bundle = _bundle_with(tmp_path, "data_classes.yaml", old, new)
    with pytest.raises(ConfigError) as caught:
        load_bundle(bundle)
    text = str(caught.value)
    assert "data_classes.yaml" in text
    assert f"{named}:" in text
    assert "(top level)" not in text


@pytest.mark.parametrize(
    ("custom", "named"),
    [
        (
            '[{name: BADGE, pattern: "B-[0-9]{6}", data_class: public},'
            ' {name: BADGE, pattern: "X-[0-9]{6}", data_class: secret}]',
            "custom.1.name: 'BADGE' is listed twice",
        ),
        (
            '[{name: EMAIL, pattern: "mail:[a-z]+", data_class: public}]',
            "custom.0.name: 'EMAIL' is a built-in entity",
        ),
    ],
)
def test_custom_pattern_names_are_unique(tmp_path: Path, custom: str, named: str) -> None:
    """A custom pattern named twice, or after a built-in entity, is refused: the first's class
    was silently the class of every match (an e-mail counted public, the second BADGE public)."""
    bundle = _bundle_with(tmp_path, "detection.yaml", "custom: []", f"custom: {custom}")
    with pytest.raises(ConfigError) as caught:
        load_bundle(bundle)
    assert f"detection.yaml: {named}" in str(caught.value)


def test_budget_for_an_unknown_route_is_refused(tmp_path: Path) -> None:
    """A route budget under a name no API has (kserve_v2 for kserve-v2) was ignored, and the
    site's default budget applied unseen; it is an error naming budgets.yaml's key."""
    bundle = _bundle_with(tmp_path, "budgets.yaml", "kserve-v2: 30000", "kserve_v2: 500")
    with pytest.raises(ConfigError) as caught:
        load_bundle(bundle)
    text = str(caught.value)
    assert "budgets.yaml" in text
    assert "routes: unknown route 'kserve_v2'" in text


@pytest.mark.parametrize("route", ["", "v1/chat/completions"])
def test_fail_open_route_must_be_a_path(tmp_path: Path, route: str) -> None:
    """A fail-open route not starting with '/' is refused: '' covered every path (each starts
    with it), so every detection failure went upstream unredacted; 'v1/...' covered none."""
    bundle = _bundle_with(
        tmp_path, "detection.yaml", "fail_open_paths: []", f'fail_open_paths: ["{route}"]'
    )
    with pytest.raises(ConfigError) as caught:
        load_bundle(bundle)
    text = str(caught.value)
    assert "detection.yaml" in text
    assert "fail_open_paths: " in text
    assert "starts with '/'" in text


def test_custom_pattern_class_contradicted_by_data_classes_is_refused(tmp_path: Path) -> None:
    """A custom pattern's class and a different one for its name in data_classes.yaml's
    entities: the pattern's won, unseen; now an error naming both."""
    bundle = _bundle_with(
        tmp_path,
        "detection.yaml",
        "custom: []",
        'custom: [{name: BADGE, pattern: "B-[0-9]{6}", data_class: public}]',
    )
    classes = bundle / "data_classes.yaml"
    classes.write_text(classes.read_text() + "  BADGE: secret\n")
    with pytest.raises(ConfigError) as caught:
        load_bundle(bundle)
    assert "data_classes.yaml: entities.BADGE: 'secret', but detection.yaml" in str(caught.value)


@pytest.mark.parametrize("revision", ['"r1\\r\\nX-Injected: yes"', '"r1\\tr2"', '"r1\\u0000"'])
def test_revision_with_a_control_character_is_refused(tmp_path: Path, revision: str) -> None:
    """The revision goes out as X-Policy-Revision: one holding a line break made aiohttp
    refuse every answer (a 500 or a dropped connection for each request)."""
    bundle = _bundle_with(
        tmp_path, "manifest.yaml", 'revision: "2026-11-27.1"', f"revision: {revision}"
    )
    with pytest.raises(ConfigError) as caught:
        load_bundle(bundle)
    text = str(caught.value)
    assert "manifest.yaml" in text
    assert "revision: holds a control character" in text
