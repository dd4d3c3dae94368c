"""Which setting changes a reload applies, and which it reports as needing a restart."""

from __future__ import annotations

import os
import time
from pathlib import Path

from router.reloadable import applied, repository_fingerprint, restart_only_changes
from router.settings import Settings


def settings(**doc: object) -> Settings:
    return Settings.model_validate(doc)


def test_reloadable_changes_are_applied_and_not_reported() -> None:
    """Routing budgets and model options change in place; nothing needs a restart."""
    running = settings()
    new = settings(routing={"openai_budget_ms": 5}, models={"max_queue_size": 7})
    assert restart_only_changes(running, new) == []
    result = applied(running, new)
    assert result.routing.openai_budget_ms == 5
    assert result.models.max_queue_size == 7


def test_listener_and_store_changes_need_a_restart_clusters_do_not() -> None:
    """Port, inference threads and the bundle source are named, dotted, and their running
    values kept; upstream clusters and the offline switch are applied (the registry re-plans)."""
    running = settings()
    new = settings(
        server={"port": 9000},
        models={"inference_threads": 64},
        routing={"offline": True},
        upstreams=[{"name": "c", "tier": "central", "endpoints": [{"url": "http://x"}]}],
        policy={"bundle": "/elsewhere"},
    )
    assert restart_only_changes(running, new) == [
        "models.inference_threads",
        "policy.bundle",
        "server.port",
    ]
    result = applied(running, new)
    assert result.server.port == running.server.port
    assert result.models.inference_threads == running.models.inference_threads
    assert result.routing.offline is True
    assert [cluster.name for cluster in result.upstreams] == ["c"]


def test_collector_sites_apply_on_reload_the_rest_of_the_spool_does_not() -> None:
    """A site added to spool.collector_sites is applied without a restart; the spool's path
    still needs one."""
    running = settings()
    new = settings(
        spool={"collector_sites": {"plant-7": "sha256:" + "a" * 64}, "path": "/elsewhere.sqlite3"}
    )
    assert restart_only_changes(running, new) == ["spool.path"]
    result = applied(running, new)
    assert result.spool.site_key_hashes() == {"plant-7": ("sha256:" + "a" * 64,)}
    assert result.spool.path is None


def test_a_model_replaced_keeping_size_and_modification_time_changes_the_fingerprint(
    tmp_path: Path,
) -> None:
    """A model file replaced by another of the same size whose modification time was kept (as
    cp -p and rsync -a copy a retrained model of the same shape) is a change to reload."""
    folder = tmp_path / "m" / "1"
    folder.mkdir(parents=True)
    model = folder / "model.onnx"
    model.write_bytes(b"weights-a")
    kept = model.stat().st_mtime_ns
    before = repository_fingerprint(tmp_path)
    time.sleep(0.01)  # the change time is the clock's, which no tool can set
    staged = folder / ".model.onnx.tmp"
    staged.write_bytes(b"weights-b")
    os.utime(staged, ns=(kept, kept))
    staged.replace(model)
    assert model.stat().st_mtime_ns == kept
    assert repository_fingerprint(tmp_path) != before


def test_a_model_folder_link_re_pointed_to_a_new_release_changes_the_fingerprint(
    tmp_path: Path,
) -> None:
    """A model folder that is a symbolic link (releases deployed side by side, the link
    switched to the new one) is walked into: re-pointing it is a change to reload."""
    releases, repo = tmp_path / "releases", tmp_path / "repo"
    for release, weights in (("a", b"weights-a"), ("b", b"weights-b")):
        (releases / release / "1").mkdir(parents=True)
        (releases / release / "1" / "model.onnx").write_bytes(weights)
    repo.mkdir()
    (repo / "m").symlink_to(releases / "a", target_is_directory=True)
    (repo / "loop").symlink_to(repo, target_is_directory=True)  # walked once, not forever
    before = repository_fingerprint(repo)
    (repo / "m").unlink()
    (repo / "m").symlink_to(releases / "b", target_is_directory=True)
    assert repository_fingerprint(repo) != before
