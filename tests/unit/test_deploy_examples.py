"""deploy/: the compose topology and the Kubernetes sidecar parse, every config file they name
exists and validates, and the pod probes the v2 health endpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from router.policy.bundle import load_bundle
from router.settings import Settings, Tier, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    return doc


def kubernetes() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((DEPLOY / "kubernetes" / "sidecar.yaml").read_text())
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


@pytest.mark.parametrize("service", ["edge", "regional", "central"])
def test_compose_tier_config_exists_and_validates(service: str) -> None:
    """Each tier mounts its own config file, which exists and describes that tier."""
    volumes = compose()["services"][service]["volumes"]
    (mount,) = [v for v in volumes if v.endswith(":/etc/layer-router/config.yaml:ro")]
    path = DEPLOY / "compose" / mount.split(":")[0]
    settings = load_settings(path)
    assert settings.site.tier == Tier(service)
    assert settings.server.host == "0.0.0.0"
    assert settings.admin.host == "0.0.0.0"  # scraped from the compose network


def test_compose_chain_points_at_services() -> None:
    """edge -> regional -> central -> llm: every upstream host is a compose service."""
    services = compose()["services"]
    for name in ("edge", "regional", "central"):
        volumes = services[name]["volumes"]
        settings = load_settings(DEPLOY / "compose" / volumes[0].split(":")[0])
        for cluster in settings.upstreams:
            for endpoint in cluster.endpoints:
                host = endpoint.url.split("//")[1].split(":")[0]
                assert host in services, endpoint.url
    assert services["edge"]["depends_on"] == {"regional": {"condition": "service_healthy"}}


def test_sidecar_config_and_bundle_from_configmaps(tmp_path: Path) -> None:
    """The ConfigMaps hold a valid site config and a policy bundle that loads."""
    objects = kubernetes()
    config = objects["ConfigMap/layer-router-config"]["data"]["config.yaml"]
    settings = Settings.model_validate(yaml.safe_load(config))
    assert str(settings.policy.bundle) == "/etc/layer-router-policy"
    assert (settings.admin.host, settings.admin.port) == ("0.0.0.0", 8002)  # scraped at pod IP
    for name, text in objects["ConfigMap/layer-router-policy"]["data"].items():
        (tmp_path / name).write_text(text)
    assert load_bundle(tmp_path).manifest.name == "default"


def test_sidecar_pod_probes_mounts_and_resources() -> None:
    """Probes on the v2 health endpoints, resources set, every volume's source defined."""
    objects = kubernetes()
    pod = objects["Pod/plant-app"]["spec"]
    (router,) = [c for c in pod["containers"] if c["name"] == "layer-router"]
    assert router["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert router["livenessProbe"]["httpGet"]["port"] == "admin"  # not refused when API is full
    assert router["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {"requests", "limits"} <= set(router["resources"])
    assert {p["containerPort"] for p in router["ports"]} == {8000, 8002}
    for volume in pod["volumes"]:
        if "configMap" in volume:
            assert f"ConfigMap/{volume['configMap']['name']}" in objects
        if "secret" in volume:
            assert f"Secret/{volume['secret']['secretName']}" in objects
    mounts = {m["mountPath"] for m in router["volumeMounts"]}
    key = Path(
        yaml.safe_load(objects["ConfigMap/layer-router-config"]["data"]["config.yaml"])["policy"][
            "secret_file"
        ]
    )
    assert str(key.parent) in mounts


def test_compose_central_decides_its_collector() -> None:
    """The compose central listens on 0.0.0.0, so its collector is decided: none is offered."""
    settings = load_settings(DEPLOY / "compose" / "central.yaml")
    assert settings.collects is False


def test_sidecar_uploads_with_a_key_from_the_secret() -> None:
    """The sidecar's spool uploads with a key file that the mounted Secret holds."""
    objects = kubernetes()
    config = yaml.safe_load(objects["ConfigMap/layer-router-config"]["data"]["config.yaml"])
    settings = Settings.model_validate(config)
    key_file = settings.spool.collector_key_file
    assert key_file is not None
    assert settings.spool.collector_url
    pod = objects["Pod/plant-app"]["spec"]
    (router,) = [c for c in pod["containers"] if c["name"] == "layer-router"]
    mounts = {m["mountPath"]: m["name"] for m in router["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(key_file.parent)])
    secret = objects[f"Secret/{volume['secret']['secretName']}"]
    assert key_file.name in secret["stringData"]


def test_sidecar_policy_configmap_is_the_default_bundle() -> None:
    """The policy ConfigMap is a copy of policies/default (test cases aside), comments and all:
    operators read it as the shipped rules, so a stale copy teaches outdated ones."""
    default = DEPLOY.parent / "policies" / "default"
    data = kubernetes()["ConfigMap/layer-router-policy"]["data"]
    assert set(data) == {p.name for p in default.glob("*.yaml")}
    for name, text in data.items():
        assert text == (default / name).read_text(), name
