"""Keep a site on the newest good policy bundle: poll the source, verify what changed, hand a
good bundle to `activate`, remember it on disk; a bad one is counted and the old one stays."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from router.errors import BundleRejected, ConfigError
from router.policy.bundle import PolicyBundle
from router.policy.keeper import BundleKeeper, BundleState, content_id
from router.policy.source import Fetched, Source

log = logging.getLogger(__name__)

Activate = Callable[[PolicyBundle], Awaitable[None]]


class BundleUpdater:
    def __init__(
        self,
        source: Source,
        keeper: BundleKeeper,
        state: BundleState,
        activate: Activate,
        *,
        persist: bool,
    ) -> None:
        self.source = source
        self.keeper = keeper
        self.state = state
        self._activate = activate
        self._persist = persist
        self._lock = asyncio.Lock()
        self.active = ""  # content_id of the active bundle (unknown until one is fetched)

    async def check(self, activate: Activate | None = None) -> bool:
        """One poll; True when a new bundle was activated (by `activate`, when given, instead
        of the updater's own). Polls never overlap."""
        async with self._lock:
            return await self._check(activate or self._activate)

    async def _check(self, activate: Activate) -> bool:
        state = self.state
        state.checks += 1
        state.last_check = time.time()
        try:
            fetched = await self.source.fetch(state.etag)
            if fetched is None or content_id(fetched.files) == self.active:
                # A server without ETags sends the same bundle again: no new generation for it.
                state.not_modified += 1
                if fetched is not None:
                    state.etag = fetched.etag
                return False
            bundle, keyid = await asyncio.to_thread(self.keeper.accept, fetched.files)
        except BundleRejected as exc:
            return self._rejected(exc.reason)
        except Exception as exc:  # unforeseen (its type only, never its words): polling goes on
            return self._rejected(f"could not be read ({type(exc).__name__})")
        try:
            await activate(bundle)
        except ConfigError as exc:  # it could not be built into a generation: the old one stays
            return self._rejected("; ".join(exc.problems))
        except Exception as exc:  # unforeseen: the old one stays, and polling must go on
            return self._rejected(f"could not be activated ({type(exc).__name__})")
        self.active = content_id(fetched.files)
        state.activated(bundle, fetched.etag, keyid)
        state.from_last_good = False
        log.info(
            "policy bundle %r revision %s serial %d activated",
            bundle.manifest.name,
            bundle.revision,
            bundle.manifest.serial,
        )
        await asyncio.to_thread(self._remember, fetched, bundle, self.active)
        return True

    def _remember(self, fetched: Fetched, bundle: PolicyBundle, content: str) -> None:
        """Blocking. The last good bundle first, then the rollback guard's mark: a crash in
        between leaves a last good bundle at least as new as the mark, so it still starts."""
        if self._persist and not self.keeper.superseded(bundle):
            try:
                self.keeper.persist(fetched.archive, fetched.etag, bundle.path)
            except OSError as exc:
                log.warning("could not keep the policy bundle on disk: %s", exc.strerror or exc)
        try:
            self.keeper.activated(bundle, content)
        except OSError as exc:  # this process still holds the mark in memory
            log.warning("could not keep the policy serial on disk: %s", exc.strerror or exc)

    def _rejected(self, reason: str) -> bool:
        self.state.rejected(reason)
        log.warning("policy bundle from %s rejected: %s", self.source.name, reason)
        return False

    async def run(self, interval_s: float, *, first: bool = False) -> None:
        """Poll every `interval_s` (`first`: poll at once, then every `interval_s`)."""
        if first:
            await self.check()
        while True:
            # Jittered below the interval (OPA's min/max delay idea): many sites started
            # together do not hit the bundle server in lockstep, and none waits longer.
            await asyncio.sleep(interval_s * random.uniform(0.8, 1.0))
            await self.check()
