"""A spool or collector store shared by a site's worker processes: appends from several
processes at once all commit and the counters stay exact; a worker that does not drain
leaves the drainer's leases alone; a key stays unique in a shared collector store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import router
from router.spool import Spool
from router.spool.collector import CollectorStore
from router.spool.wire import Item

ROUTER_ROOT = Path(router.__file__).resolve().parents[1]
PUTS = 300

APPENDER = """
import sys
from pathlib import Path
from router.spool import Spool
with Spool.open_sync(Path(sys.argv[1]), shared=True, drains=False) as spool:
    for n in range(int(sys.argv[2])):
        assert spool.put_sync("audit", b"x" * 100, key=f"{sys.argv[3]}-{n}") is not None
"""


def test_appends_from_two_processes_all_commit(tmp_path: Path) -> None:
    """Two processes appending at once (group commits contending for the file): every
    record is stored and produced == pending."""
    path = tmp_path / "spool.sqlite3"
    env = dict(os.environ, PYTHONPATH=str(ROUTER_ROOT))
    children = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(PUTS), name], env=env)
        for name in ("a", "b")
    ]
    with Spool.open_sync(path, shared=True) as spool:  # a third opener, holding it meanwhile
        assert [child.wait(60) for child in children] == [0, 0]
        counts = spool.counts_sync()
    assert (counts.produced, counts.pending, counts.failed) == (2 * PUTS, 2 * PUTS, 0)
    assert counts.balanced


def test_a_non_draining_opener_keeps_the_leases(tmp_path: Path) -> None:
    """A worker starting while the drainer has a batch in flight does not free that batch,
    so the drainer's acknowledgement still deletes it (delivered once)."""
    path = tmp_path / "spool.sqlite3"
    with Spool.open_sync(path, shared=True) as drainer:
        for n in range(10):
            drainer.put_sync("audit", b"x", key=f"k{n}")
        batch = drainer.take_batch_sync(10)
        with Spool.open_sync(path, shared=True, drains=False) as worker:
            assert worker.take_batch_sync(10) == []  # all leased by the drainer
        assert drainer.ack_sync([r.id for r in batch]) == 10
        counts = drainer.counts_sync()
    assert (counts.delivered, counts.pending) == (10, 0)


def test_shared_collector_stores_a_key_once(tmp_path: Path) -> None:
    """The same record uploaded to two workers of a central site is stored once."""
    path = tmp_path / "collector.sqlite3"
    item = Item(key="site-a:1", kind="audit", payload=b"{}", created=1.0, expires=None)
    first = CollectorStore.open_sync(path, shared=True)
    second = CollectorStore.open_sync(path, shared=True)
    try:
        assert first.add_sync([item]).new == 1
        added = second.add_sync([item])
        assert (added.new, added.duplicates, added.accepted) == (0, 1, ["site-a:1"])
    finally:
        first.close_sync()
        second.close_sync()
