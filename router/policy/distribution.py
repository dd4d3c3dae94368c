"""Which bundle a site starts on, and how it is kept current.

The rule: when public keys are configured, every bundle must carry a valid signature by one of
them (the unsigned embedded default is then never used to serve). Without keys, only a local
bundle (a folder, a .tar.gz, or the embedded default) may be used, and it may be unsigned; a
remote source without keys is a configuration error (see PolicySettings)."""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from router.errors import BundleRejected
from router.policy.bundle import PolicyBundle, load_bundle
from router.policy.highwater import HighWater
from router.policy.keeper import BundleKeeper, BundleState, content_id
from router.policy.signing import Files, load_public_keys
from router.policy.source import PathSource, Source, source_for
from router.resources import default_policy_bundle, state_dir
from router.settings import BundleSourceSettings, Settings
from router.upstreams.tls import ClientTls

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Start:
    bundle: PolicyBundle
    pending: bool  # no good bundle yet: serve nothing until the source answers
    keeper: BundleKeeper
    state: BundleState
    source: Source
    remote: bool
    content: str = ""  # content_id of the bundle started on ("" when pending)


def source_settings(settings: Settings) -> BundleSourceSettings:
    policy = settings.policy
    if policy.source is not None:
        return policy.source
    return BundleSourceSettings(path=policy.bundle or default_policy_bundle())


def site_store(settings: Settings) -> Path:
    """Where a site keeps its materialised bundles, its last good one and its serial mark."""
    return state_dir() / "policy" / settings.site.id


def first_bundle(settings: Settings) -> Start:
    """Blocking: reads keys and files. A bad local bundle stops start-up (BundleRejected, a
    ConfigError); a remote source starts on the last good copy on disk, else pending."""
    keys = load_public_keys(settings.policy.public_keys)
    keeper = BundleKeeper(keys, site_store(settings))
    configured = source_settings(settings)
    source = source_for(configured)
    embedded = settings.policy.source is None and settings.policy.bundle is None
    state = BundleState(
        source="embedded" if embedded else source.name, signatures_required=bool(keys)
    )
    if isinstance(source, PathSource):
        fetched = source.read()
        bundle, keyid = keeper.accept(fetched.files)  # older than the mark: start-up stops
        state.activated(bundle, fetched.etag, keyid)
        content = _remembered(keeper, bundle, fetched.files)
        return Start(bundle, False, keeper, state, source, False, content)
    kept = keeper.last_good()
    if kept is not None:
        files, _, etag = kept
        try:
            # Checked against the mark too: a last good archive swapped for an older signed one
            # is refused. With no (or an unreadable) mark file, the kept bundle's serial
            # becomes the mark: deleting the file lets nothing older in than the site ran.
            bundle, keyid = keeper.accept(files)
        except (BundleRejected, OSError) as exc:  # kept, but no longer verifiable: pending
            log.warning("last good policy bundle on disk rejected: %s", exc)
        else:
            state.activated(bundle, etag, keyid)
            state.from_last_good = True
            content = _remembered(keeper, bundle, files)
            return Start(bundle, False, keeper, state, source, True, content)
    return Start(load_bundle(default_policy_bundle()), True, keeper, state, source, remote=True)


def _remembered(keeper: BundleKeeper, bundle: PolicyBundle, files: Files) -> str:
    """The content id of the bundle a site starts on, its serial recorded as the mark."""
    content = content_id(files)
    try:
        keeper.activated(bundle, content)
    except OSError as exc:  # the mark held in memory still guards this process
        log.warning("could not keep the policy serial on disk: %s", exc.strerror or exc)
    return content


def checked_bundle(settings: Settings) -> PolicyBundle | None:
    """For `layer-router check`: the local bundle, verified as `serve` would verify it (in a
    scratch folder, leaving the state directory alone); None for a remote source. Blocking."""
    configured = source_settings(settings)
    keys = load_public_keys(settings.policy.public_keys)
    if configured.url is not None:
        ClientTls(configured.tls, "policy.source.tls")  # its files, read as `serve` reads them
        return None
    scratch = Path(tempfile.mkdtemp(prefix="layer-router-check-"))
    # Kept until the command exits: the bundle's cases are read from it after this returns.
    atexit.register(shutil.rmtree, scratch, True)
    folder = configured.path if configured.path is not None and configured.path.is_dir() else None
    # A folder is loaded in place first, so that errors name the operator's own files.
    local = load_bundle(folder) if folder is not None else None
    keeper = BundleKeeper(keys, scratch)
    if keeper.high_water is not None:  # refused as `serve` would refuse it; only read here
        keeper.high_water = HighWater(site_store(settings))
    bundle, _ = keeper.accept(PathSource(configured).read().files)
    return local or bundle
