"""Rollback protection end to end: a bundle server that turns to an older, validly signed bundle
(a stale mirror, an attacker replaying a download) cannot move a site back, not while it runs
nor after a restart without its mark file; a deliberate rollback is the old content re-signed
with a higher serial."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest
from test_bundle_distribution import (
    INFER,
    BundleServer,
    bundle_status,
    site_settings,
    wait_for,
)
from test_serve_process import run_cli

from router.policy.archive import pack, read_folder
from router.policy.highwater import HIGH_WATER
from router.policy.signing import SIGNATURES_FILE, generate_keypair, load_private_key, sign
from router.resources import default_policy_bundle
from router.testing import AppThread, RouterThread

SITE = "rollback-site"


def serialled(tmp_path: Path, revision: str, serial: int, key: Path, note: str = "") -> bytes:
    """The default bundle as revision `revision` with `serial`, signed by `key`."""
    folder = tmp_path / f"bundle-{revision}-{serial}-{len(note)}"
    shutil.copytree(default_policy_bundle(), folder)
    manifest = (folder / "manifest.yaml").read_text().replace("2026-11-27.1", revision)
    (folder / "manifest.yaml").write_text(manifest + f"serial: {serial}\n")
    if note:
        with (folder / "tenants.yaml").open("a") as tenants:
            tenants.write(f"\n# {note}\n")
    files = read_folder(folder)
    files[SIGNATURES_FILE] = sign(files, load_private_key(key))
    return pack(files)


def metric(site: RouterThread, name: str) -> float:
    text = httpx.get(site.admin_url + "/metrics", timeout=10).text
    found = re.search(rf"^layer_router_policy_bundle_{name} (\S+)$", text, re.M)
    assert found is not None, name
    return float(found.group(1))


def answered_revision(site: RouterThread) -> str:
    answer = httpx.post(site.url + "/v2/models/color_classifier/infer", content=INFER, timeout=10)
    assert answer.status_code == 200
    return answer.headers["X-Policy-Revision"]


def test_a_site_keeps_the_newer_bundle_when_the_server_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edge_models: Path
) -> None:
    """Older and same-serial-other-content bundles are rejected (shown in /status, counted in
    /metrics) while the newer one keeps serving; the old content re-signed with a higher serial
    is activated; a restart without the mark file still refuses the older bundle."""
    monkeypatch.setenv("LAYER_ROUTER_STATE_DIR", str(tmp_path / "state"))
    secret, public = generate_keypair(tmp_path / "central")
    old = tmp_path / "old.tar.gz"
    old.write_bytes(serialled(tmp_path, "r3", 3, secret))
    server = BundleServer()
    server.publish(serialled(tmp_path, "r5", 5, secret))
    with AppThread(server.app) as thread:
        settings = site_settings(SITE, thread.url + "/bundles/site.tar.gz", public, edge_models)
        with RouterThread(settings, admin=True) as site:
            wait_for(lambda: bundle_status(site)["serial"] == 5, 10)
            wait_for(lambda: bundle_status(site)["not_modified"] >= 1, 5)  # re-polls are fine

            server.publish(old.read_bytes())
            wait_for(lambda: bundle_status(site)["rejections"] >= 1, 5)
            status = httpx.get(site.admin_url + "/status", timeout=10).json()["policy"]
            assert status["last_error"] == "rollback: serial 3 is older than the active serial 5"
            assert (status["revision"], status["serial"], status["ready"]) == ("r5", 5, True)
            assert answered_revision(site) == "r5"
            assert metric(site, "rejections_total") >= 1
            assert metric(site, "serial") == 5

            server.publish(serialled(tmp_path, "r5-other", 5, secret, note="weaker rules"))
            wait_for(lambda: "other content" in (bundle_status(site)["last_error"] or ""), 5)
            assert answered_revision(site) == "r5"

            # The documented way back: the old content, re-signed with a higher serial.
            again = tmp_path / "r3-again.tar.gz"
            signed = run_cli(
                "bundle", "sign", old, "--serial", "6", "--signing-key", secret, "-o", again
            )
            assert signed.returncode == 0, signed.stderr
            server.publish(again.read_bytes())
            wait_for(lambda: bundle_status(site)["serial"] == 6, 5)
            assert answered_revision(site) == "r3"
            rejections = bundle_status(site)["rejections"]

        # Restarted with the mark file gone, the server replaying the old bundle again.
        (tmp_path / "state" / "policy" / SITE / HIGH_WATER).unlink()
        server.publish(old.read_bytes())
        with RouterThread(settings, admin=True) as site:
            assert bundle_status(site)["from_last_good"] is True
            wait_for(lambda: bundle_status(site)["rejections"] >= 1, 5)
            status = bundle_status(site)
            assert status["last_error"] == "rollback: serial 3 is older than the active serial 6"
            assert (status["revision"], status["serial"]) == ("r3", 6)
            assert answered_revision(site) == "r3"
    assert rejections >= 2
