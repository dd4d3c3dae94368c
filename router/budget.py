"""Latency budgets: read from `X-Latency-Budget-Ms`, passed on as what remains of them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from router.errors import BadRequest

if TYPE_CHECKING:
    from router.policy.model import Budgets
    from router.settings import RoutingSettings

BUDGET_HEADER = "X-Latency-Budget-Ms"
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def budget_ms(headers: Mapping[str, str], default_ms: float) -> float:
    """The client's budget in milliseconds, or the route's default when it states none."""
    raw = headers.get(BUDGET_HEADER)
    if raw is None:
        return default_ms
    # float() alone would also take "1_000", "nan" and "infinity": not numbers in a header.
    if _NUMBER.fullmatch(raw.strip()) is None:
        raise BadRequest(f"{BUDGET_HEADER} must be a number of milliseconds")
    value = float(raw)
    if not 0 < value <= 86_400_000:
        # 0 would be a request already out of time: the bounds say so in the same words.
        raise BadRequest(f"{BUDGET_HEADER} must be more than 0 and at most 86400000 milliseconds")
    return value


def remaining_ms(deadline: float, now: float) -> int:
    """What is left, floored, as sent upstream; never below 1 ms so a header stays valid."""
    return max(1, int((deadline - now) * 1000))


def model_budget(bundle: Budgets, routing: RoutingSettings, model: str) -> float | None:
    """A model's own default budget (ms): the bundle's budgets.yaml first, then the site's."""
    route = routing.models.get(model)
    return bundle.models.get(model) or (route.budget_ms if route else None)
