"""router/store_forward: what the request path says when the spool does not take its copies."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from router.policy.bundle import load_bundle
from router.privacy import Privacy
from router.resources import default_policy_bundle
from router.store_forward import StoreAndForward


class FullSpool:
    """Refuses the first `refused` records (full, or the disk is), then takes them."""

    def __init__(self, refused: int) -> None:
        self.refused = refused
        self.kept: list[str] = []

    async def put(self, kind: str, payload: bytes, key: str = "") -> str | None:
        if self.refused:
            self.refused -= 1
            return None
        self.kept.append(key)
        return key


async def test_refused_copies_are_logged_once_per_episode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Copies the spool refuses are logged once when it starts and once when it ends (with
    the number), not once per answer: on a full disk that would flood the log."""
    bundle = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), bundle)
    privacy = Privacy.build(load_bundle(bundle), None, b"s" * 32)
    spool = FullSpool(refused=20)
    store = StoreAndForward(spool, privacy, "site-1")  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="router.store_forward"):
        for n in range(25):
            store.audit_copy({"id": f"id{n}"})
            await store.drain_pending()  # one at a time: the spool answers in order
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "not stored" in messages[0]
    assert "stored again, after 20 not stored" in messages[1]
    assert spool.kept == [f"audit:id{n}" for n in range(20, 25)]
