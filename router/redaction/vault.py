"""The per-request token vault: reversible placeholders such as ``<EMAIL_1>``.

A vault belongs to exactly one request and lives in memory for that request only: it is never
shared, cached or persisted (pickling it raises). A token from another request is simply unknown
here, so it can never restore into the wrong response.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NoReturn, SupportsIndex

# A placeholder is '<', an upper-case label, '_', a decimal number and '>'. The bounds keep the
# rehydration regex linear and the stream hold-back short; the format has no '@', no digit runs
# longer than the counter and no secret-like prefix, so detectors do not match it again.
MAX_LABEL = 40
TOKEN_RE = re.compile(rf"<[A-Z][A-Z0-9_]{{0,{MAX_LABEL - 1}}}_[1-9][0-9]{{0,8}}>")

_NOT_LABEL = re.compile(r"[^A-Z0-9_]")


def entity_label(entity: str) -> str:
    """The upper-case label an entity shows in placeholders and pseudonyms."""
    label = _NOT_LABEL.sub("_", entity.upper())
    if not label[:1].isalpha():
        label = "X" + label
    return label[:MAX_LABEL]


class TokenVault:
    """Maps placeholders to the values they stand for, for one request."""

    __slots__ = ("_by_token", "_by_value", "_counts", "_max_len", "_prefixes", "_reserved")

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        # Placeholders the request itself holds (a template's `<EMAIL_1>`): never issued, so a
        # value's token cannot be mistaken for the caller's text, nor restored in its place.
        self._reserved = frozenset(reserved)
        self._by_value: dict[tuple[str, str], str] = {}
        self._by_token: dict[str, str] = {}
        self._counts: dict[str, int] = {}  # the last number issued, per label
        self._max_len = 0
        self._prefixes: frozenset[str] | None = frozenset()

    def token_for(self, entity: str, value: str) -> str:
        """The placeholder for value: the same value gets the same token within the request."""
        label = entity_label(entity)
        key = (label, value)
        known = self._by_value.get(key)
        if known is not None:
            return known
        number = self._counts.get(label, 0) + 1
        while (token := f"<{label}_{number}>") in self._reserved:
            number += 1
        self._counts[label] = number
        self._by_value[key] = token
        self._by_token[token] = value
        self._max_len = max(self._max_len, len(token))
        self._prefixes = None
        return token

    def restore(self, token: str) -> str | None:
        """The value behind a token issued by this vault, or None for any other string."""
        return self._by_token.get(token)

    def is_partial(self, text: str) -> bool:
        """True when text is a proper prefix of a token issued here (it may still complete)."""
        if self._prefixes is None:
            self._prefixes = frozenset(t[:i] for t in self._by_token for i in range(1, len(t)))
        return text in self._prefixes

    @property
    def counts(self) -> dict[str, int]:
        """Distinct values tokenized, per entity label."""
        counts: dict[str, int] = {}
        for label, _ in self._by_value:
            counts[label] = counts.get(label, 0) + 1
        return counts

    @property
    def max_token_length(self) -> int:
        """The length of the longest token issued so far (0 when none)."""
        return self._max_len

    def __len__(self) -> int:
        return len(self._by_token)

    def __bool__(self) -> bool:
        # An empty vault is still this request's vault: `vault or TokenVault()` must not swap it.
        return True

    def __repr__(self) -> str:
        # Counts only: a vault's values must never reach a log line or an error message.
        return f"TokenVault({self.counts!r})"

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise TypeError("a TokenVault lives in memory for one request and is never persisted")
