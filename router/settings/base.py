"""Types shared by every settings section; kept apart so the sections import no one but this."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
# A site's id: in file names (the audit log, the collector store) and in the spool's uploads.
SiteId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]
# A URL path, or the prefix of request paths, all of which begin with "/": a prefix without
# it would match nothing, a path without it would be glued to the endpoint's port.
PathPrefix = Annotated[str, Field(pattern=r"^/")]


# RFC 9110's token: a field name has no spaces, colons or line breaks.
_FIELD_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# What no field value may hold (RFC 9110 §5.5): control characters but the tab.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _sendable(headers: dict[str, str]) -> dict[str, str]:
    """Header fields the router sends as written (a bundle server's token, a cluster's API
    key): each must be one a request can carry (a line break would start another field;
    aiohttp and the h1 client refuse it only when they send it, as an error blamed on the
    client's request). Values are never quoted back."""
    for name, value in headers.items():
        if not _FIELD_NAME.match(name):
            raise ValueError(f"{name!r} is no header name (no spaces, colons or line breaks)")
        if _CONTROL.search(value):
            raise ValueError(
                f"the value of {name} holds a line break or another control character (a "
                "YAML block scalar keeps its last line break: write it quoted, or with |-)"
            )
    return headers


HeaderFields = Annotated[dict[str, str], AfterValidator(_sendable)]


class Tier(StrEnum):
    EDGE = "edge"
    REGIONAL = "regional"
    CENTRAL = "central"
