"""Bundle sources as status and logs name them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from router.errors import BundleRejected
from router.policy.source import HttpSource
from router.resources import default_policy_bundle
from router.settings import BundleSourceSettings
from router.testing import AppThread


async def test_credentials_in_a_source_url_are_never_shown() -> None:
    """user:password in the URL is used to fetch but left out of the name status shows."""
    source = HttpSource(BundleSourceSettings(url="https://ops:canary-pw@central.example/b.tar.gz"))
    try:
        assert "canary-pw" not in source.name
        assert source.name == "https://central.example/b.tar.gz"
    finally:
        await source.close()


def _serving_4_kib() -> web.Application:
    async def big(_request: web.Request) -> web.Response:
        return web.Response(body=b"\0" * 4096)

    app = web.Application()
    app.router.add_get("/b.tar.gz", big)
    return app


async def test_an_archive_over_max_bytes_is_named_too_large_not_unreachable() -> None:
    """A bundle server answering with more than `max_bytes` was reported 'unreachable', which
    sends the operator to the network; the rejection says the archive is too large."""
    with AppThread(_serving_4_kib) as server:
        source = HttpSource(BundleSourceSettings(url=server.url + "/b.tar.gz", max_bytes=1024))
        try:
            with pytest.raises(BundleRejected) as caught:
                await source.fetch(None)
        finally:
            await source.close()
    assert caught.value.reason == (
        "bundle server answered more than policy.source.max_bytes (1024 bytes)"
    )


WITHOUT_DAC = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
RUN = "import sys; from router.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop capabilities"
)
@pytest.mark.parametrize(
    ("command", "locked", "mode", "reason"),
    [
        ("check", "cases", 0o300, "cannot read cases: Permission denied"),
        ("serve", "tenants.yaml", 0o000, "cannot read tenants.yaml: Permission denied"),
    ],
)
def test_a_bundle_file_or_folder_that_cannot_be_read_is_refused(
    tmp_path: Path, command: str, locked: str, mode: int, reason: str
) -> None:
    """A bundle's `cases/` the user may not list was skipped by rglob (check: '0 policy cases
    passed', exit 0), and a file it may not read stopped serve with a PermissionError stack
    trace; each is a clear refusal (exit 2) naming what cannot be read."""
    bundle = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), bundle)
    config = tmp_path / "site.yaml"
    config.write_text(f"policy: {{bundle: {bundle}}}\nadmin: {{port: 0}}\n")
    args = [command, str(config)] if command == "check" else [command, "--config", str(config)]
    if command == "serve":
        args += ["--port", "0"]
    (bundle / locked).chmod(mode)
    env = {**os.environ, "LAYER_ROUTER_STATE_DIR": str(tmp_path / "state")}
    try:
        done = subprocess.run(
            [*WITHOUT_DAC, sys.executable, "-c", RUN, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        (bundle / locked).chmod(0o755)
    assert done.returncode == 2, done.stdout + done.stderr
    assert reason in done.stderr
    assert "Traceback" not in done.stderr
