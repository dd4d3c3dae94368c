"""Types shared by every settings section; kept apart so the sections import no one but this."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
# A site's id: in file names (the audit log, the collector store) and in the spool's uploads.
SiteId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]
# A URL path, or the prefix of request paths, all of which begin with "/": a prefix without
# it would match nothing, a path without it would be glued to the endpoint's port.
PathPrefix = Annotated[str, Field(pattern=r"^/")]


class Tier(StrEnum):
    EDGE = "edge"
    REGIONAL = "regional"
    CENTRAL = "central"
