"""Residency's `once_redacted_to`: what a tier's redaction leaves of a request, counting the
field paths (`redaction.yaml` tiers.X.paths) whose own action keeps what the tier's default
would redact."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from router.policy.bundle import PolicyBundle, load_bundle
from router.policy.residency import permits, residual

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "policies" / "default"
ABROAD = frozenset({"US"})


def bundle_with_central(tmp_path: Path, central: dict[str, object]) -> PolicyBundle:
    """The default bundle, central's redaction replaced, sensitive data allowed abroad once
    redacted to internal."""
    folder = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, folder)
    redaction = yaml.safe_load((folder / "redaction.yaml").read_text())
    redaction["tiers"]["central"] = central
    (folder / "redaction.yaml").write_text(yaml.safe_dump(redaction))
    residency = yaml.safe_load((folder / "residency.yaml").read_text())
    for rule in residency["rules"]:
        if rule["data_class"] == "sensitive":
            rule["jurisdictions"] = ["any"]
    (folder / "residency.yaml").write_text(yaml.safe_dump(residency))
    return load_bundle(folder)


def card_abroad(bundle: PolicyBundle) -> bool:
    return permits(
        bundle,
        declared="internal",
        entities=frozenset({"CARD"}),
        tier="central",
        jurisdictions=ABROAD,
        origin="EU",
    )


def test_tokenized_card_may_go_abroad(tmp_path: Path) -> None:
    """The control: a card central tokenizes leaves an internal request, allowed abroad."""
    bundle = bundle_with_central(tmp_path, {"default": "tokenize"})
    assert residual(bundle, "internal", ["CARD"], "central") == "internal"
    assert card_abroad(bundle)


def test_path_that_keeps_a_card_keeps_it_sensitive(tmp_path: Path) -> None:
    """A field path whose action is keep leaves a card in clear there: the residual class is
    sensitive, so the rule 'once redacted to internal' does not let it abroad."""
    bundle = bundle_with_central(
        tmp_path, {"default": "tokenize", "paths": {"messages.*.content": "keep"}}
    )
    assert residual(bundle, "internal", ["CARD"], "central") == "sensitive"
    assert not card_abroad(bundle)


def test_entity_listed_for_the_tier_wins_over_a_keeping_path(tmp_path: Path) -> None:
    """An entity the tier names keeps its own action under every path (as the walker merges
    them), so a keeping path leaves it redacted."""
    bundle = bundle_with_central(
        tmp_path,
        {"default": "tokenize", "entities": {"CARD": "tokenize"}, "paths": {"**": "keep"}},
    )
    assert residual(bundle, "internal", ["CARD"], "central") == "internal"
    assert residual(bundle, "internal", ["EMAIL"], "central") == "personal"
    assert card_abroad(bundle)
