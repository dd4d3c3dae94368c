"""The README's examples are what operators copy: its YAML blocks must parse, and the site
config examples must be valid site configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from router import yamlconf
from router.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
# Blocks that are whole site configs (the others are bundle files or use elided hashes).
SITE_CONFIG_HEADS = ("site: {id: plant-7, tier: edge}", "server:", "policy:", "# the site's config")


def test_readme_has_yaml_blocks() -> None:
    """The pattern finds the README's YAML examples (else the tests below check nothing)."""
    assert len(YAML_BLOCKS) >= 5


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.splitlines()[0][:40])
def test_yaml_blocks_parse(block: str) -> None:
    """Every YAML example in the README is valid YAML."""
    yaml.safe_load(block)


@pytest.mark.parametrize(
    "block",
    [b for b in YAML_BLOCKS if b.startswith(SITE_CONFIG_HEADS)],
    ids=lambda b: b.splitlines()[0][:40],
)
def test_site_config_examples_validate(block: str, tmp_path: Path) -> None:
    """Every site-config example in the README is accepted by the settings schema."""
    path = tmp_path / "config.yaml"
    path.write_text(block)
    yamlconf.load(path, Settings)
