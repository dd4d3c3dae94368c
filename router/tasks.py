"""Background tasks' end: cancelled together, and waited for until each has finished."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any


async def cancel_all(tasks: Collection[asyncio.Future[Any]]) -> None:
    """Cancel every task and wait for all of them; their errors and cancellations are theirs
    (a task that ends with an error at shutdown must not stop the others' clean-up)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
