"""The demo's three sites as files: a model repository and a site config per tier.

    edge      color_classifier v1/v2 (small, fast); escalates answers below 0.9 confidence
    regional  hotspot_detector (the thermal-camera model a plant's region would run)
    central   color_classifier_large (four shades per colour: only here), and the mock LLM

Every link between tiers goes through a fault proxy the switchboard controls, so a tier can
be cut and restored while the demo runs."""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from router.resources import demo_model_repository
from router.settings import Settings

TIERS = ("edge", "regional", "central")
ESCALATION_THRESHOLD = 0.9
LLM_MODEL = "mock-llm"


@dataclass(frozen=True)
class Ports:
    edge: int
    regional: int
    central: int
    llm: int
    control: int
    admin: dict[str, int]

    @classmethod
    def from_base(cls, base: int) -> Ports:
        """Fixed, memorable ports (edge on `base`, the others at +10, +20...); 0: any free."""
        if base == 0:
            edge, regional, central, llm, control = (free_port() for _ in range(5))
            admin = {tier: free_port() for tier in TIERS}
            return cls(edge, regional, central, llm, control, admin)
        admin = {tier: base + 2 + 10 * i for i, tier in enumerate(TIERS)}
        return cls(base, base + 10, base + 20, base + 30, base + 90, admin)

    def of(self, tier: str) -> int:
        port: int = getattr(self, tier)
        return port


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


# The central tier's own models (edge_models/build_demo_models.py writes them here).
CENTRAL_MODELS = Path(__file__).resolve().parent / "models"


def build_repositories(root: Path) -> dict[str, Path]:
    """Each tier's own model repository, copied from the bundled demo models."""
    source = demo_model_repository()
    repos = {tier: root / tier / "models" for tier in TIERS}
    for repo in repos.values():
        shutil.rmtree(repo, ignore_errors=True)
        repo.mkdir(parents=True)
    shutil.copytree(source / "color_classifier", repos["edge"] / "color_classifier")
    shutil.copytree(source / "hotspot_detector", repos["regional"] / "hotspot_detector")
    shutil.copytree(CENTRAL_MODELS, repos["central"], dirs_exist_ok=True)
    return repos


def cluster(name: str, tier: str, upstream_url: str, **extra: Any) -> dict[str, Any]:
    """A link to the next tier, tuned so a demo user sees a cut within about a second."""
    return {
        "name": name,
        "tier": tier,
        "endpoints": [{"url": upstream_url}],
        "connect_timeout_ms": 500,
        "request_timeout_ms": 5_000,
        "discovery_interval_s": 2.0,
        "health_check": {"interval_s": 0.5, "timeout_s": 0.5},
        "retry": {"base_backoff_ms": 5, "max_backoff_ms": 20},
        **extra,
    }


def site_config(
    tier: str, port: int, admin_port: int, upstreams: list[dict[str, Any]], **routing: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "site": {"id": f"demo-{tier}", "tier": tier},
        "server": {"host": "127.0.0.1", "port": port, "readiness_grace_s": 0},
        "models": {"repository": "models", "inference_threads": 1},
        "upstreams": upstreams,
        "routing": routing,
        "audit": {"path": "state/audit"},
    }
    # The admin listener (issue 6) arrives in parallel: three sites on one host need three ports.
    if "admin" in Settings.model_fields:
        doc["admin"] = {"host": "127.0.0.1", "port": admin_port}
    return doc


def write_configs(root: Path, ports: Ports, links: dict[str, str]) -> dict[str, Path]:
    """The three site configs; `links` maps "edge->regional" etc. to the proxy URL to use."""
    escalate = {"to_model": "color_classifier_large", "threshold": ESCALATION_THRESHOLD}
    docs = {
        "edge": site_config(
            "edge",
            ports.edge,
            ports.admin["edge"],
            [
                cluster("regional", "regional", links["edge->regional"]),
                cluster("central", "central", links["edge->central"]),
            ],
            models={"color_classifier": {"escalate": escalate}},
        ),
        "regional": site_config(
            "regional",
            ports.regional,
            ports.admin["regional"],
            [cluster("central", "central", links["regional->central"])],
        ),
        "central": site_config(
            "central",
            ports.central,
            ports.admin["central"],
            [cluster("llm", "central", url(ports.llm), protocols=["openai"])],
        ),
    }
    paths = {}
    for tier, doc in docs.items():
        path = root / tier / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# layer-router demo: the {tier} site\n" + yaml.safe_dump(doc))
        paths[tier] = path
    return paths
