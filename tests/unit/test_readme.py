"""The README's examples are what operators copy: its YAML blocks must parse, and the site
config examples must be valid site configs."""

from __future__ import annotations

import re
import shlex
import typing
from pathlib import Path

import pytest
import yaml

from router import errors, yamlconf
from router.api.admin import STATUS_SECTIONS
from router.cli import _parser
from router.inference.model_config import ModelConfig
from router.policy.model import Tenants
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


# Keys whose value in the README's main config example is the default, as the prose around it
# says (the other keys are examples: names, addresses, files).
DEFAULT_SHOWN = (
    "server.port",
    "server.max_body_bytes",
    "server.drain_timeout_s",
    "server.readiness_grace_s",
    "server.workers",
    "admin",
    "logging",
    "models.max_queue_size",
    "routing.kserve_v2_budget_ms",
    "routing.openai_budget_ms",
    "routing.local_max_payload_bytes",
    "routing.idempotent_paths",
    "routing.offline",
    "cache",
    "audit",
    "spool.path",
    "spool.max_bytes",
    "spool.max_records",
    "spool.ttl_s",
    "spool.on_full",
    "spool.batch_size",
    "spool.drain_rate_per_s",
    "spool.collector_retention_s",
    "spool.collector_max_bytes",
)
CLUSTER_DEFAULT_SHOWN = (
    "protocols",
    "connect_timeout_ms",
    "discovery_interval_s",
    "forward_authorization",
    "max_response_bytes",
    "request_timeout_ms",
    "expected_latency_ms",
    "max_connections",
    "max_pending",
    "client",
    "relay_over_bytes",
    "outlier",
    "health_check",
    "retry",
)


def _at(tree: object, dotted: str) -> object:
    for key in dotted.split("."):
        tree = getattr(tree, key)
    return tree


def test_config_example_shows_the_defaults(tmp_path: Path) -> None:
    """The main config example's non-example values are the defaults the code has."""
    (block,) = [b for b in YAML_BLOCKS if b.startswith("site: {id: plant-7, tier: edge}")]
    path = tmp_path / "config.yaml"
    path.write_text(block)
    shown, default = yamlconf.load(path, Settings), Settings()
    for dotted in DEFAULT_SHOWN:
        assert _at(shown, dotted) == _at(default, dotted), dotted
    cluster = shown.upstreams[0]
    bare = type(cluster).model_validate(
        {"name": cluster.name, "tier": cluster.tier, "endpoints": [{"url": "http://h:1"}]}
    )
    for key in CLUSTER_DEFAULT_SHOWN:
        assert getattr(cluster, key) == getattr(bare, key), key


def _code_metric_names() -> set[str]:
    """Metric names as router/telemetry/metrics.py spells them (no prefix, no _total/_info)."""
    src = (README.parent / "router" / "telemetry" / "metrics.py").read_text()
    names = set(re.findall(r'PREFIX \+ "([a-z_]+)"', src)) - {"policy_bundle_"}
    names |= set(re.findall(r'\(\s*"[a-z_]+",\s*"(upstream_[a-z_]+)"', src))
    names |= {"policy_bundle_" + n for n in re.findall(r'\("([a-z_]+)", state\.', src)}
    return names


def _readme_metric_names() -> set[str]:
    paragraph = README.read_text().split("**`/metrics`**", 1)[1].split("\n\n", 1)[0]
    names = set()
    for token in re.findall(r"`([a-z_]+)(?:\{[a-z_,]+\})?`", paragraph):
        if token.endswith(("_total", "_info")):
            token = token.rsplit("_", 1)[0]
        names.add(token)
    return names - {"layer_router_"}  # the prefix itself


def test_readme_metrics_are_the_code_metrics() -> None:
    """The README's /metrics list names every metric the router exports, and no other."""
    code = _code_metric_names()
    assert len(code) > 30
    assert _readme_metric_names() == code


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    lines = (line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines())
    return [line.split("layer-router ", 1)[1] for line in lines if line.startswith("layer-router ")]


def test_readme_has_commands() -> None:
    """The pattern finds the README's layer-router commands (else the test below checks none)."""
    assert len(_readme_commands()) >= 8


@pytest.mark.parametrize("command", _readme_commands())
def test_readme_commands_parse(command: str) -> None:
    """Every layer-router command the README shows names a real subcommand and real flags."""
    _parser().parse_args(shlex.split(command))


def _code_reasons() -> set[str]:
    """Route reason codes as the router writes them (the part before any `:`)."""
    found: set[str] = set()
    for path in (README.parent / "router").rglob("*.py"):
        src = path.read_text()
        found |= set(re.findall(r'reasons\.(?:append|extend)\(\[?f?"([a-z_]+)', src))
        found |= set(re.findall(r'f"([a-z_]+):\{', src)) & {
            "over_budget",
            "failed",
            "escalation_failed",
            "escalated_low_confidence",
            "version_pinned",
            "residency",
            "unhealthy",
            "retried",
        }
        for line in re.findall(r"(?:reasons\.append\(|kind = )(.*)", src):
            found |= set(re.findall(r'(?<![{\w])"([a-z_]+)"', line))
    return found


def test_readme_lists_every_route_reason() -> None:
    """The README's X-Route-Reason row names every reason code the router gives."""
    row = next(line for line in README.read_text().splitlines() if "| `X-Route-Reason` |" in line)
    listed = {token.split(":", 1)[0] for token in re.findall(r"`([a-z_]+(?::[A-Za-z_]+)*)`", row)}
    code = _code_reasons()
    assert len(code) > 15
    assert code <= listed, sorted(code - listed)


def test_tenants_example_validates(tmp_path: Path) -> None:
    """The README's tenants.yaml example (its elided key hash made whole) is a valid file."""
    (block,) = [b for b in YAML_BLOCKS if b.startswith("# policies/<bundle>/tenants.yaml")]
    path = tmp_path / "tenants.yaml"
    path.write_text(re.sub(r"sha256:[0-9a-f]*…", "sha256:" + "0" * 64, block))
    tenants = yamlconf.load(path, Tenants)
    assert tenants.tenants


def _setting_exists(dotted: str) -> bool:
    model: object = Settings
    for part in dotted.replace("[]", "").split("."):
        fields = getattr(model, "model_fields", {})
        if part == "*":
            return True
        if part not in fields:
            return False
        annotation = fields[part].annotation
        inner = [annotation, *typing.get_args(annotation)]
        inner += [a for c in inner for a in typing.get_args(c)]
        model = next((c for c in inner if isinstance(c, type) and hasattr(c, "model_fields")), None)
    return True


def test_readme_setting_names_exist() -> None:
    """Every `section.key` setting the README's prose names is a real settings key."""
    text = README.read_text()
    named = set(re.findall(r"`([a-z_]+(?:\[\])?(?:\.[a-z_*]+)+)(?:[:=][^`]*)?`", text))
    sections = set(Settings.model_fields)
    settings = {n for n in named if n.split(".")[0].replace("[]", "") in sections}
    examples = {"server.prot", "cache.yaml"}  # an error message, a bundle file
    assert len(settings) > 15
    assert sorted(n for n in settings - examples if not _setting_exists(n)) == []


def test_readme_status_sections_are_the_code_sections() -> None:
    """The README's /status paragraph names the sections admin.py's STATUS_SECTIONS serves."""
    paragraph = README.read_text().split("**`/status`**", 1)[1].split("\n\n", 1)[0]
    named = re.findall(r"`([a-z]+)`", paragraph)
    assert named == [name for name, _ in STATUS_SECTIONS]


def test_readme_error_codes_have_their_statuses() -> None:
    """Every `NNN code` the README quotes is an error of router/errors.py with that status."""
    codes = {
        cls.code: cls.status
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.RouterError)
    }
    quoted = re.findall(r"`([45]\d\d) ([a-z]+(?:_[a-z]+)*)`", README.read_text())
    assert len(quoted) >= 10
    assert [(s, c) for s, c in quoted if codes.get(c) != int(s)] == []


def test_readme_model_config_table_names_every_key() -> None:
    """The README's model config.yaml table names every key ModelConfig accepts."""
    section = README.read_text().split("### Model repository", 1)[1].split("\n\n", 3)[2]
    named = {
        key.split(".")[0]
        for cell in re.findall(r"^\| ([^|]+) \|", section, re.M)
        for key in re.findall(r"`([a-z0-9_.]+)`", cell)
    }
    assert set(ModelConfig.model_fields) <= named, sorted(set(ModelConfig.model_fields) - named)


def test_hot_reload_applies_what_the_readme_says() -> None:
    """Hot reload applies `routing.*`, `models.*` but inference_threads, and the collector's
    sites and bound."""
    from router.reloadable import RELOADABLE, RELOADABLE_SECTIONS
    from router.settings import ModelSettings, RoutingSettings

    assert (
        "`routing.*`, `models.*` (but\n  `inference_threads`) and `upstreams`" in README.read_text()
    )
    assert set(RELOADABLE["routing"]) == set(RoutingSettings.model_fields)
    assert set(RELOADABLE["models"]) == set(ModelSettings.model_fields) - {"inference_threads"}
    assert RELOADABLE["spool"] == (
        "collector_sites",
        "collector_retention_s",
        "collector_max_bytes",
    )
    assert "`spool.collector_sites`, `collector_retention_s` and `collector_max_bytes` apply" in (
        README.read_text()
    )
    assert {"upstreams"} == RELOADABLE_SECTIONS


def test_readme_header_names_are_the_routers() -> None:
    """Every X- header the README names is one the router's code reads or writes."""
    source = "\n".join(p.read_text() for p in (README.parent / "router").rglob("*.py")).lower()
    named = set(re.findall(r"`(X-[A-Za-z-]+[A-Za-z])", README.read_text()))
    assert len(named) > 10
    assert sorted(h for h in named if f'"{h.lower()}' not in source) == []


def _fields_of(model: type, seen: set[tuple[str, str]]) -> None:
    """Every (settings class, field) pair reachable from `model`, into `seen`."""
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        if (model.__name__, name) in seen:
            continue
        seen.add((model.__name__, name))
        sub = _submodel(field.annotation)
        if sub is not None:
            _fields_of(sub, seen)


def _submodel(annotation: object) -> type | None:
    inner = [annotation, *typing.get_args(annotation)]
    inner += [a for c in inner for a in typing.get_args(c)]
    return next((c for c in inner if isinstance(c, type) and hasattr(c, "model_fields")), None)


def _fields_shown(tree: object, model: type, shown: set[tuple[str, str]]) -> None:
    """The (settings class, field) pairs a YAML example sets, walked along the settings model."""
    if isinstance(tree, list):
        for item in tree:
            _fields_shown(item, model, shown)
        return
    if not isinstance(tree, dict):
        return
    fields = model.model_fields  # type: ignore[attr-defined]
    for key, value in tree.items():
        if key not in fields:
            continue
        shown.add((model.__name__, key))
        annotation = fields[key].annotation
        sub = _submodel(annotation)
        if sub is None:
            continue
        if typing.get_origin(annotation) is dict and isinstance(value, dict):
            for item in value.values():  # routing.models.<name>, collector_sites.<site>
                _fields_shown(item, sub, shown)
        else:
            _fields_shown(value, sub, shown)


def _fields_named(dotted: str, shown: set[tuple[str, str]]) -> None:
    """The (settings class, field) pairs a `section.key` name in the prose passes through."""
    model: type | None = Settings
    for part in dotted.replace("[]", "").split("."):
        fields = getattr(model, "model_fields", {})
        if model is None or part not in fields:
            return
        shown.add((model.__name__, part))
        model = _submodel(fields[part].annotation)


# Named only in a comment or in prose without their section: `url: ... # or path: a folder`,
# and `verify: false` in the TLS section's list of `upstreams[].tls` keys.
NAMED_IN_PASSING = {("BundleSourceSettings", "path"), ("TlsSettings", "verify")}


def test_readme_names_every_setting() -> None:
    """Every settings key is shown in one of the README's site-config examples or named in its
    prose as `section.key`, so no setting exists that an operator cannot find."""
    every: set[tuple[str, str]] = set()
    _fields_of(Settings, every)
    shown: set[tuple[str, str]] = set(NAMED_IN_PASSING)
    for block in YAML_BLOCKS:
        tree = yaml.safe_load(block)
        if isinstance(tree, dict) and set(tree) <= set(Settings.model_fields):
            _fields_shown(tree, Settings, shown)
    for dotted in re.findall(r"`([a-z_]+(?:\[\])?(?:\.[a-z_]+)+)", README.read_text()):
        _fields_named(dotted, shown)
    assert len(every) > 100
    assert sorted(every - shown) == []


def _dependency_rows() -> list[str]:
    section = README.read_text().split("## Dependencies, and why each", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    return cells[1:]  # below the header


def test_readme_explains_every_dependency() -> None:
    """The "why each dependency" table names every requirement of pyproject.toml (runtime ones
    in a row of their own, an extra's in a row naming that extra) and nothing else."""
    import tomllib

    project = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]

    def name(requirement: str) -> str:
        return re.split(r"[<>=;\[ ]", requirement, maxsplit=1)[0].lower()

    rows = _dependency_rows()
    runtime = {name(r) for r in project["dependencies"]}
    assert runtime == {row.lower() for row in rows if "extra" not in row}
    for extra, requirements in project["optional-dependencies"].items():
        named = {
            n.split("[")[0].strip().lower()
            for row in rows
            if re.search(rf"\b{extra}\b.*extras?:", row)
            for n in re.split(r",\s*", row.split(":", 1)[1])
        }
        assert {name(r) for r in requirements} == named, extra
    script = (README.parent / "scripts" / "test").read_text()
    installed = {name(r) for r in re.findall(r"pip install .*'([a-z0-9-]+==[^']+)'", script)}
    assert installed
    assert {n for n in installed if any(n in row for row in rows)} == installed


def test_readme_says_which_route_the_openapi_document_leaves_out() -> None:
    """The README calls the OpenAPI document the whole client API: the collector route, which
    it leaves out, is named as such (the document holds every other route, see
    test_openapi_contract)."""
    from router.spool.collector import COLLECTOR_PATH

    spec = yaml.safe_load((README.parent / "router" / "api" / "openapi.yaml").read_text())
    assert COLLECTOR_PATH not in spec["paths"]
    sentence = README.read_text().split("is described in OpenAPI 3.0", 1)[0][-200:]
    assert f"`POST {COLLECTOR_PATH}`" in sentence
