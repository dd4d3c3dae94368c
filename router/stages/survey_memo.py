"""What a cacheable request's survey found, remembered by a keyed digest of exactly what was
surveyed: a repeat of the same bytes (a cache hit, most often) skips the detection walk.

Sound because the survey is a pure function of what the key covers (route and query, the
scanned headers, the JSON the body holds, the binary tensors when it read them) under one
policy bundle; a survey that ran out of its CPU deadline is never remembered. Nothing the
request said is kept: keys are BLAKE2b digests under a per-process random key, values are
entity counts.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter
from collections.abc import Mapping

from cachetools import LRUCache

from router.context import RequestContext

MAX_ENTRIES = 8192


class SurveyMemo:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._key = secrets.token_bytes(32)
        self._names: tuple[str, ...] = ()
        self._headers: frozenset[str] = frozenset()  # the ones the survey scans, lower case
        # per key: the entity counts, and whether the walk re-encodes a JSON string it holds
        self._found: LRUCache[bytes, tuple[tuple[tuple[str, int], ...], bool]] = LRUCache(
            max_entries
        )
        self._detectors: object = None

    def key(self, ctx: RequestContext, detectors: object, headers: tuple[str, ...]) -> bytes:
        """The digest of everything the survey of `ctx` reads (`headers`: the ones it scans)
        with `detectors`; other detectors (a reloaded bundle) empty the memo first."""
        if detectors is not self._detectors:
            self._found.clear()
            self._detectors = detectors
        if headers is not self._names:
            self._names, self._headers = headers, frozenset(h.lower() for h in headers)
        mac = hashlib.blake2b(key=self._key, digest_size=16)
        for part in (ctx.api, ctx.path, *_scanned(ctx.headers, self._headers)):
            _frame(mac, part.encode("utf-8", "surrogatepass"))
        body = memoryview(ctx.body)
        _frame(mac, body if ctx.header_length is None else body[: ctx.header_length])
        if ctx.inlined is not None:
            # The survey read binary tensors too (router.v2.inline): a header alone does not
            # tell a clean tensor from a same-sized one holding an e-mail or a card number.
            _frame(mac, body[ctx.header_length or 0 :])
        return mac.digest()

    def get(self, key: bytes) -> tuple[Counter[str], bool] | None:
        """What the survey found, and whether a tier's walk must re-encode (MemoScanner.
        rewrites): a repeat that found nothing then needs no walk of its own either."""
        remembered = self._found.get(key)
        if remembered is None:
            return None
        found, rewrites = remembered
        return Counter(dict(found)), rewrites

    def put(self, key: bytes, found: Counter[str], rewrites: bool = False) -> None:
        self._found[key] = (tuple(found.items()), rewrites)


def _scanned(headers: Mapping[str, str], names: frozenset[str]) -> list[str]:
    """The scanned headers as the survey reads them: every name and value, repeats in order."""
    parts: list[str] = []
    for name, value in headers.items():
        if name.lower() in names:
            parts += (name.lower(), value)
    return parts


def _frame(mac: hashlib.blake2b, data: bytes | memoryview) -> None:
    mac.update(len(data).to_bytes(8, "little"))  # framing: no two part lists collide
    mac.update(data)
