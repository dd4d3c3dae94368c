"""Actions on findings: keep, drop, mask, hash (keyed pseudonym) and tokenize (reversible).

Every replacement is designed so that detectors do not match it again, which makes redaction
idempotent: placeholders and pseudonyms are ``<LABEL...>`` with no '@', no digit run longer than
a token counter and no secret-like prefix; a mask keeps at most four characters of the value.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Mapping, Sequence

from router.redaction.normalize import normalize
from router.redaction.types import Action, DetectionError, Finding
from router.redaction.vault import TokenVault, entity_label

# Values shorter than this are masked completely: four visible characters of a short value
# would give away too much of it.
MASK_MIN_LEN = 10
MASK_TAIL = 4
PSEUDONYM_CHARS = 12  # 48 bits: collisions stay unlikely over millions of values at a site

# How much an action reveals, least to most protective; overlapping findings take the strictest.
STRICTNESS = {
    Action.KEEP: 0,
    Action.MASK: 1,
    Action.HASH: 2,
    Action.TOKENIZE: 3,
    Action.DROP: 4,
}

# Hex digits mapped onto letters a-p (as Chrome extension ids do): a pseudonym never contains a
# digit, so phone, date or card detectors cannot find one inside it.
_HEX_TO_LETTERS = str.maketrans("0123456789abcdef", "abcdefghijklmnop")
# What `Hasher.pseudonym` makes: hashing one again (a chained router's `hash`) keeps it as it is.
_PSEUDONYM = re.compile(rf"<[A-Z][A-Z0-9_]*#[a-p]{{{PSEUDONYM_CHARS}}}>")


class Hasher:
    """Keyed HMAC-SHA256 pseudonyms, stable for one site secret: ``<EMAIL#kdpfaoijcmbe>``."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the hashing secret must be at least 16 bytes")
        self._secret = secret

    def pseudonym(self, entity: str, value: str) -> str:
        """The same (entity, value) always gives the same pseudonym under one secret."""
        label = entity_label(entity)
        message = label.encode() + b"\x00" + value.encode("utf-8", "surrogatepass")
        digest = hmac.new(self._secret, message, hashlib.sha256).hexdigest()
        return f"<{label}#{digest[:PSEUDONYM_CHARS].translate(_HEX_TO_LETTERS)}>"

    def __repr__(self) -> str:
        return "Hasher(<secret>)"


def mask(value: str) -> str:
    """All but the last four characters replaced by '*'; short values entirely."""
    if len(value) < MASK_MIN_LEN:
        return "*" * len(value)
    return "*" * (len(value) - MASK_TAIL) + value[-MASK_TAIL:]


def action_for(entity: str, policy: Mapping[str, Action], default: Action) -> Action:
    """The configured action for an entity, or the default when it has none."""
    return policy.get(entity, default)


def apply(
    text: str,
    findings: Sequence[Finding],
    policy: Mapping[str, Action],
    vault: TokenVault,
    hasher: Hasher,
    default: Action = Action.TOKENIZE,
) -> tuple[str, Counter[str]]:
    """Text with every finding replaced by its entity's action, and redactions per entity.

    ``findings`` are offsets into ``text``. Overlapping findings are merged into one span that
    takes the strictest of their actions, so no part of either value survives. Kept findings
    are not counted; text whose findings are all kept is returned unchanged.
    """
    counts: Counter[str] = Counter()
    pieces: list[str] = []
    last = 0
    for start, end, entity, action in _spans(text, findings, policy, default):
        if action is Action.KEEP or (
            action is Action.HASH and _PSEUDONYM.fullmatch(text[start:end])
        ):
            continue
        pieces.append(text[last:start])
        pieces.append(_replace(entity, text[start:end], action, vault, hasher))
        counts[entity] += 1
        last = end
    if not counts:
        return text, counts
    pieces.append(text[last:])
    return "".join(pieces), counts


def _replace(entity: str, value: str, action: Action, vault: TokenVault, hasher: Hasher) -> str:
    if action is Action.DROP:
        return ""
    if action is Action.MASK:
        return mask(value)
    if action is Action.HASH:
        # Of the normalised value: a pseudonym names the value, however it was encoded.
        return hasher.pseudonym(entity, normalize(value))
    return vault.token_for(entity, value)


def _spans(
    text: str, findings: Sequence[Finding], policy: Mapping[str, Action], default: Action
) -> list[tuple[int, int, str, Action]]:
    """Findings sorted and merged where they overlap, each with the action it resolves to."""
    spans: list[tuple[int, int, str, Action]] = []
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if not 0 <= f.start < f.end <= len(text):
            # A detector bug: fail closed rather than guess which characters were meant.
            raise DetectionError("a detector reported a span outside the text")
        action = Action(action_for(f.entity, policy, default))
        if spans and f.start < spans[-1][1]:
            start, end, entity, previous = spans[-1]
            if STRICTNESS[action] > STRICTNESS[previous]:
                entity, previous = f.entity, action
            spans[-1] = (start, max(end, f.end), entity, previous)
        else:
            spans.append((f.start, f.end, f.entity, action))
    return spans
