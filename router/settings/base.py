"""Types shared by every settings section; kept apart so the sections import no one but this."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
# A site's id: in file names (the audit log, the collector store) and in the spool's uploads.
SiteId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]
# Header fields written into config (a bundle server's token, a cluster's API key): a name is
# an RFC 9110 token and a value holds no control character (a line break), or the HTTP client
# refuses every request that carries them.
HeaderName = Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
HeaderValue = Annotated[str, Field(pattern=r"^[^\x00-\x08\x0a-\x1f\x7f]*$")]
HeaderFields = dict[HeaderName, HeaderValue]


class Tier(StrEnum):
    EDGE = "edge"
    REGIONAL = "regional"
    CENTRAL = "central"
