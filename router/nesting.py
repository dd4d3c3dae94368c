"""JSON nesting depth: a request deeper than MAX_DEPTH is refused with a clear 400.

orjson stops at 1024 levels on its own, but the router's own walkers (redaction, audit
digests) recurse, and no real inference request nests beyond a handful of levels."""

from __future__ import annotations

from typing import Any

from router.errors import MalformedBody

MAX_DEPTH = 64
TOO_DEEP = f"request body nests JSON deeper than {MAX_DEPTH} levels"


def check_depth(raw: bytes | memoryview, doc: Any) -> None:
    """Counting brackets in C settles almost every request; only documents with more than
    MAX_DEPTH brackets are walked, and only their containers."""
    data = raw if isinstance(raw, bytes) else bytes(raw)  # a v2 header part: small
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return
    level: list[Any] = [doc]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return
    raise MalformedBody(TOO_DEEP)


def is_depth_error(exc: Exception) -> bool:
    """orjson's own limit (1024 levels), to be reported in our words."""
    return "depth limit" in str(exc)
