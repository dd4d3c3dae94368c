"""Signed policy bundles: what verifies, and every way a bundle is rejected."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import orjson
import pytest

from router.errors import BundleRejected
from router.policy.archive import pack, read_folder, unpack
from router.policy.keeper import BundleKeeper
from router.policy.signing import (
    SIGNATURES_FILE,
    generate_keypair,
    load_private_key,
    load_public_keys,
    sign,
    verify,
)
from router.resources import default_policy_bundle


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "site")


@pytest.fixture
def signed(keys: tuple[Path, Path]) -> dict[str, bytes]:
    files = read_folder(default_policy_bundle())
    files[SIGNATURES_FILE] = sign(files, load_private_key(keys[0]))
    return files


def test_a_signed_bundle_verifies_with_its_key(
    signed: dict[str, bytes], keys: tuple[Path, Path]
) -> None:
    """A bundle signed by a configured key verifies and names that key."""
    public = load_public_keys((keys[1],))
    assert verify(signed, public) == next(iter(public))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: f.pop(SIGNATURES_FILE), "not signed"),
        (lambda f: f.__setitem__("tenants.yaml", f["tenants.yaml"] + b"\n# x\n"), "digest"),
        (lambda f: f.__setitem__("extra.yaml", b"a: 1\n"), "not covered"),
        (lambda f: f.pop("residency.yaml"), "missing"),
        (lambda f: f.__setitem__(SIGNATURES_FILE, b"{not json"), "malformed"),
    ],
    ids=["unsigned", "tampered", "extra-file", "missing-file", "malformed-signature"],
)
def test_changed_bundles_are_rejected(
    signed: dict[str, bytes], keys: tuple[Path, Path], change: object, reason: str
) -> None:
    """Unsigned, tampered, extra and missing files each reject the bundle, saying why."""
    change(signed)  # type: ignore[operator]
    with pytest.raises(BundleRejected, match=reason):
        verify(signed, load_public_keys((keys[1],)))


def test_a_bundle_signed_by_another_key_is_rejected(
    signed: dict[str, bytes], tmp_path: Path
) -> None:
    """A valid signature by a key the site does not trust is no signature."""
    _, other = generate_keypair(tmp_path / "other")
    with pytest.raises(BundleRejected, match="not a configured key"):
        verify(signed, load_public_keys((other,)))


def test_a_forged_signature_is_rejected(signed: dict[str, bytes], keys: tuple[Path, Path]) -> None:
    """A listing re-written to match tampered files fails the signature itself."""
    signed["tenants.yaml"] += b"\n# x\n"
    doc = orjson.loads(signed[SIGNATURES_FILE])
    doc["files"] = [
        {**item, "sha256": hashlib.sha256(signed[item["name"]]).hexdigest()}
        for item in doc["files"]
    ]
    signed[SIGNATURES_FILE] = orjson.dumps(doc)
    with pytest.raises(BundleRejected, match="does not verify"):
        verify(signed, load_public_keys((keys[1],)))


def test_archives_round_trip_reproducibly(signed: dict[str, bytes]) -> None:
    """pack then unpack gives the same files, and packing twice the same bytes (ETags)."""
    assert unpack(pack(signed)) == signed
    assert pack(signed) == pack(dict(signed))


@pytest.mark.parametrize("name", ["../escape.yaml", "/etc/passwd"])
def test_archives_with_unsafe_names_are_rejected(name: str) -> None:
    """A member that would land outside the bundle's folder rejects the archive."""
    with pytest.raises(BundleRejected, match="unsafe name"):
        unpack(pack({name: b"x"}))


def test_garbage_is_not_an_archive() -> None:
    """Bytes that are not a tar.gz are a rejection, not a crash."""
    with pytest.raises(BundleRejected, match="not a valid"):
        unpack(b"\x1f\x8b garbage")


def test_keeper_rejects_a_signed_bundle_with_invalid_content(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """A correctly signed bundle whose YAML is invalid is rejected all the same."""
    folder = tmp_path / "bundle"
    shutil.copytree(default_policy_bundle(), folder)
    (folder / "cache.yaml").write_text("max_data_class: no-such-class\n")
    files = read_folder(folder)
    files[SIGNATURES_FILE] = sign(files, load_private_key(keys[0]))
    keeper = BundleKeeper(load_public_keys((keys[1],)), tmp_path / "store")
    with pytest.raises(BundleRejected, match=r"cache\.yaml: .*unknown data class"):
        keeper.accept(files)


def configmap_volume(tmp_path: Path) -> Path:
    """The default bundle laid out as Kubernetes mounts a ConfigMap: each file a symlink into
    `..data`, itself a symlink to a timestamped folder."""
    volume = tmp_path / "policy"
    stamped = volume / "..2026_11_27_15_00_00.123456789"
    stamped.mkdir(parents=True)
    source = default_policy_bundle()
    names = [p.name for p in source.iterdir() if p.is_file()]
    for name in names:
        shutil.copyfile(source / name, stamped / name)
    (volume / "..data").symlink_to(stamped.name)
    for name in names:
        (volume / name).symlink_to(f"..data/{name}")
    return volume


def test_a_configmap_volume_reads_as_its_files(tmp_path: Path) -> None:
    """A bundle mounted from a ConfigMap (the sidecar manifest's way) reads as the same files
    as the plain folder, without Kubernetes' `..data` internals."""
    files = read_folder(configmap_volume(tmp_path))
    plain = read_folder(default_policy_bundle())
    assert files == {name: data for name, data in plain.items() if "/" not in name}


def test_a_symlink_out_of_the_bundle_is_refused(tmp_path: Path) -> None:
    """A symlink that leads outside the bundle folder is refused, never read."""
    volume = configmap_volume(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("CANARY")
    (volume / "extra.yaml").symlink_to(secret)
    with pytest.raises(BundleRejected, match="out of the bundle"):
        read_folder(volume)


def test_keeper_loads_the_verified_bytes_not_a_stale_folder(
    tmp_path: Path, signed: dict[str, bytes], keys: tuple[Path, Path]
) -> None:
    """A bundle folder kept from an earlier run that no longer holds the verified files (an
    empty file after a power cut, an edit) is written again before the bundle is loaded."""
    store = tmp_path / "store"
    keeper = BundleKeeper(load_public_keys((keys[1],)), store)
    bundle, _ = keeper.accept(signed)
    (folder,) = store.glob("bundle-*")
    manifest = folder / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace(bundle.revision, "NOT-SIGNED"))
    (folder / "residency.yaml").write_bytes(b"")
    (folder / "stray.yaml").write_bytes(b"a: 1\n")
    again, _ = BundleKeeper(load_public_keys((keys[1],)), store).accept(signed)
    assert again.revision == bundle.revision
    assert read_folder(folder) == signed
    assert [p.name for p in store.iterdir()] == [folder.name]


def test_a_store_that_cannot_be_written_is_named(
    tmp_path: Path, signed: dict[str, bytes], keys: tuple[Path, Path]
) -> None:
    """A state folder the router cannot write rejects the bundle with an error naming the
    place, so an operator knows which folder to fix."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    keeper = BundleKeeper(load_public_keys((keys[1],)), blocker / "store")
    with pytest.raises(BundleRejected, match=r"cannot store the bundle in .*not-a-folder"):
        keeper.accept(signed)


def test_leftovers_of_a_killed_writer_are_swept(tmp_path: Path) -> None:
    """Staging folders and temporary files an hour old (a kill -9 mid-activation) are removed
    when a keeper opens the store; fresh ones, a live writer's, and the bundles are kept."""
    store = tmp_path / "store"
    (store / ".staging-old" / "bundle").mkdir(parents=True)
    (store / ".staging-old" / "bundle" / "manifest.yaml").write_text("x")
    (store / ".staging-new").mkdir()
    (store / "last-good.tar.gz.41.7.tmp").write_bytes(b"half")
    (store / "bundle-abc").mkdir()
    hours_ago = time.time() - 2 * 3600
    for old in (store / ".staging-old", store / "last-good.tar.gz.41.7.tmp"):
        os.utime(old, (hours_ago, hours_ago))
    BundleKeeper({}, store)
    assert sorted(p.name for p in store.iterdir()) == [".staging-new", "bundle-abc"]
