"""A JSON text held in a string (tool-call arguments) that may say more than its parse: such
a text goes on as its parse re-encoded, never as written, to a tier that may not see all."""

from __future__ import annotations

import re
from typing import Any

# In a JSON text: a float literal whose parse may not keep the digits written (7 or more before
# the point, or an exponent), and the end of an object key (what may follow a string).
_LONG_FLOAT = re.compile(r"[0-9]{7}\.|[0-9][eE][-+]?[0-9]")
_KEY_END = re.compile(r'"\s*:')


def may_hide(text: str, parsed: Any) -> bool:
    """Whether a JSON text may hold what its parse does not: a float literal with a long
    integer part or an exponent (whose digits the parsed value may not keep), or more keys
    than its parse has (a repeated key; a value holding '":' only errs toward yes)."""
    if _LONG_FLOAT.search(text) is not None:
        return True
    return len(_KEY_END.findall(text)) > _key_count(parsed)


def _key_count(parsed: Any) -> int:
    count, stack = 0, [parsed]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            count += len(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count
