"""The rollback guard: a site never activates a signed bundle older than one it has run, keeps
that mark beside its last good bundle, and falls back to that bundle's serial when the mark
file is gone or damaged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from router.errors import BundleRejected
from router.policy.archive import pack, read_folder
from router.policy.distribution import checked_bundle, first_bundle
from router.policy.highwater import HIGH_WATER, HighWater
from router.policy.keeper import BundleKeeper, content_id
from router.policy.signing import SIGNATURES_FILE, key_id, sign
from router.resources import default_policy_bundle
from router.settings import Settings

KEY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}


def signed(serial: int | None, note: str = "", key: Ed25519PrivateKey = KEY) -> dict[str, bytes]:
    """The default bundle with `serial` in its manifest (None: no serial line), `note` making
    its content differ, signed by `key`."""
    files = read_folder(default_policy_bundle())
    if serial is not None:
        files["manifest.yaml"] += b"serial: %d\n" % serial
    if note:
        files["tenants.yaml"] += b"\n# " + note.encode() + b"\n"
    files[SIGNATURES_FILE] = sign(files, key)
    return files


def activate(keeper: BundleKeeper, files: dict[str, bytes]) -> None:
    """What the updater does with a good bundle: accept it, then raise the mark."""
    bundle, _ = keeper.accept(files)
    keeper.activated(bundle, content_id(files))


def rejection(check: Callable[[], object]) -> str:
    """Why `check` refuses a bundle (the test fails when it does not)."""
    with pytest.raises(BundleRejected) as rejected:
        check()
    return rejected.value.reason


def test_a_newer_serial_is_accepted(tmp_path: Path) -> None:
    """Serial 2 after serial 1 is an ordinary update."""
    keeper = BundleKeeper(KEYS, tmp_path)
    activate(keeper, signed(1))
    bundle, _ = keeper.accept(signed(2))
    assert bundle.manifest.serial == 2


def test_an_older_serial_is_rejected_with_a_clear_reason(tmp_path: Path) -> None:
    """A validly signed bundle below the active serial is a rollback."""
    keeper = BundleKeeper(KEYS, tmp_path)
    activate(keeper, signed(5))
    reason = rejection(lambda: keeper.accept(signed(3)))
    assert reason == "rollback: serial 3 is older than the active serial 5"


def test_the_same_serial_with_the_same_content_is_accepted(tmp_path: Path) -> None:
    """Fetching the active bundle again, even re-signed by another configured key, is fine."""
    other = Ed25519PrivateKey.generate()
    keys = {**KEYS, key_id(other.public_key()): other.public_key()}
    keeper = BundleKeeper(keys, tmp_path)
    activate(keeper, signed(4))
    keeper.accept(signed(4))
    keeper.accept(signed(4, key=other))


def test_the_same_serial_with_other_content_is_rejected(tmp_path: Path) -> None:
    """A signer must bump the serial for new content: equal serials mean equal bundles."""
    keeper = BundleKeeper(KEYS, tmp_path)
    activate(keeper, signed(4))
    reason = rejection(lambda: keeper.accept(signed(4, note="weaker rules")))
    assert reason.startswith("rollback: serial 4 is already active with other content")


def test_the_mark_survives_a_new_keeper(tmp_path: Path) -> None:
    """A restarted site (a new keeper on the same store) still refuses the older bundle."""
    activate(BundleKeeper(KEYS, tmp_path), signed(7))
    assert orjson.loads((tmp_path / HIGH_WATER).read_bytes())["serial"] == 7
    reason = rejection(lambda: BundleKeeper(KEYS, tmp_path).accept(signed(6)))
    assert reason == "rollback: serial 6 is older than the active serial 7"


def test_bundles_without_a_serial_replace_each_other_until_one_has_a_serial(
    tmp_path: Path,
) -> None:
    """Serial 0 (none) keeps today's behaviour; after serial 1 an unversioned bundle is older."""
    keeper = BundleKeeper(KEYS, tmp_path)
    activate(keeper, signed(None, "first"))
    activate(keeper, signed(None, "second"))
    activate(keeper, signed(None, "first"))
    activate(keeper, signed(1))
    reason = rejection(lambda: keeper.accept(signed(None, "third")))
    assert reason == "rollback: serial 0 is older than the active serial 1"


def test_unsigned_local_bundles_are_not_guarded(tmp_path: Path) -> None:
    """Without keys a serial is not authenticated: nothing is enforced nor written."""
    keeper = BundleKeeper({}, tmp_path)
    activate(keeper, signed(5))
    keeper.accept(signed(2))
    assert not (tmp_path / HIGH_WATER).exists()


def test_a_worker_behind_never_lowers_the_mark(tmp_path: Path) -> None:
    """Two workers share the file: the one still on an older serial sees the newer mark, and
    its late write does not lower it."""
    ahead, behind = HighWater(tmp_path), HighWater(tmp_path)
    behind.record(5, "five")
    ahead.record(7, "seven")
    reason = rejection(lambda: behind.check(6, "six"))
    assert reason == "rollback: serial 6 is older than the active serial 7"
    behind.record(6, "six")
    assert orjson.loads((tmp_path / HIGH_WATER).read_bytes())["serial"] == 7


def test_a_deleted_mark_file_does_not_lower_a_running_process(tmp_path: Path) -> None:
    """The process remembers its own mark; deleting the file changes nothing until restart."""
    keeper = BundleKeeper(KEYS, tmp_path)
    activate(keeper, signed(5))
    (tmp_path / HIGH_WATER).unlink()
    reason = rejection(lambda: keeper.accept(signed(4)))
    assert reason == "rollback: serial 4 is older than the active serial 5"


@pytest.mark.parametrize("serial", ["'5'", "-1", "true", "1.5"])
def test_a_serial_must_be_a_non_negative_integer(tmp_path: Path, serial: str) -> None:
    """A serial that is not a plain integer rejects the bundle, naming the manifest."""
    files = read_folder(default_policy_bundle())
    files["manifest.yaml"] += f"serial: {serial}\n".encode()
    files[SIGNATURES_FILE] = sign(files, KEY)
    reason = rejection(lambda: BundleKeeper(KEYS, tmp_path).accept(files))
    assert reason.startswith("manifest.yaml: serial")


# Start-up: the last good bundle and the mark file together.


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A site polling a URL (never reached here) with its own state directory."""
    monkeypatch.setenv("LAYER_ROUTER_STATE_DIR", str(tmp_path / "state"))
    public = tmp_path / "key.pub"
    public.write_bytes(
        KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    source = {"url": "http://127.0.0.1:9/bundle.tar.gz"}
    return Settings.model_validate(
        {"site": {"id": "rollback"}, "policy": {"source": source, "public_keys": [public]}}
    )


def store(tmp_path: Path) -> Path:
    return tmp_path / "state" / "policy" / "rollback"


def kept(tmp_path: Path, files: dict[str, bytes]) -> None:
    """A site that ran `files` and kept it as its last good bundle (mark included)."""
    keeper = BundleKeeper(KEYS, store(tmp_path))
    bundle, _ = keeper.accept(files)
    keeper.persist(pack(files), None, bundle.path)
    keeper.activated(bundle, content_id(files))


async def started(settings: Settings) -> BundleKeeper:
    """The keeper a site starts with, after it loaded its last good bundle."""
    start = first_bundle(settings)
    await start.source.close()
    assert not start.pending
    assert start.state.serial == 5
    return start.keeper


@pytest.mark.parametrize("damage", ["delete", "garbage", "lower"])
async def test_a_damaged_mark_file_falls_back_to_the_last_good_serial(
    tmp_path: Path, site: Settings, damage: str
) -> None:
    """Deleted, unreadable or lowered: the mark becomes the last good bundle's serial again."""
    kept(tmp_path, signed(5))
    mark = store(tmp_path) / HIGH_WATER
    if damage == "delete":
        mark.unlink()
    else:
        lowered = orjson.dumps({"serial": 1, "content": "x"})
        mark.write_bytes(b"{not json" if damage == "garbage" else lowered)
    keeper = await started(site)
    reason = rejection(lambda: keeper.accept(signed(4)))
    assert reason == "rollback: serial 4 is older than the active serial 5"
    assert orjson.loads(mark.read_bytes())["serial"] == 5


async def test_a_last_good_bundle_older_than_the_mark_is_not_started_on(
    tmp_path: Path, site: Settings
) -> None:
    """A kept archive swapped for an older signed one: the site waits for its source instead."""
    kept(tmp_path, signed(5))
    HighWater(store(tmp_path)).record(6, "newer")
    start = first_bundle(site)
    await start.source.close()
    assert start.pending


def test_check_refuses_a_local_bundle_older_than_the_site_has_run(
    tmp_path: Path, site: Settings
) -> None:
    """`layer-router check` reads the site's mark (never writes it): an older local bundle is
    refused as `serve` would refuse it, a newer one passes."""
    kept(tmp_path, signed(5))
    archive = tmp_path / "local.tar.gz"
    local = Settings.model_validate(
        {
            "site": {"id": "rollback"},
            "policy": {"source": {"path": archive}, "public_keys": site.policy.public_keys},
        }
    )
    archive.write_bytes(pack(signed(4)))
    reason = rejection(lambda: checked_bundle(local))
    assert reason == "rollback: serial 4 is older than the active serial 5"
    archive.write_bytes(pack(signed(6)))
    assert checked_bundle(local) is not None
    assert orjson.loads((store(tmp_path) / HIGH_WATER).read_bytes())["serial"] == 5


def test_an_older_local_signed_bundle_stops_start_up(tmp_path: Path, site: Settings) -> None:
    """With keys, a `path` source is guarded too: an older archive is a start-up error."""
    kept(tmp_path, signed(5))
    archive = tmp_path / "local.tar.gz"
    archive.write_bytes(pack(signed(4)))
    local = Settings.model_validate(
        {
            "site": {"id": "rollback"},
            "policy": {"source": {"path": archive}, "public_keys": site.policy.public_keys},
        }
    )
    reason = rejection(lambda: first_bundle(local))
    assert reason == "rollback: serial 4 is older than the active serial 5"


def test_a_bundle_below_the_mark_is_superseded(tmp_path: Path) -> None:
    """A worker that activated serial 5 after another marked 6 does not keep 5 as last good."""
    keeper = BundleKeeper(KEYS, tmp_path)
    bundle, _ = keeper.accept(signed(5))
    assert not keeper.superseded(bundle)
    HighWater(tmp_path).record(6, "another worker's")
    assert keeper.superseded(bundle)
    assert not BundleKeeper({}, tmp_path).superseded(bundle)
