"""Types shared by every settings section; kept apart so the sections import no one but this."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class Tier(StrEnum):
    EDGE = "edge"
    REGIONAL = "regional"
    CENTRAL = "central"
