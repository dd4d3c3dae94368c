"""Fixtures of the loopback suites: an exit stack for the servers a test starts, and a client
whose every call is bounded, so a hung router fails the test instead of hanging it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

LIMIT_S = 10.0  # any single client call


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    """Servers entered here stop when the test ends, last started first."""
    async with contextlib.AsyncExitStack() as stack:
        yield stack


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session; no call may take longer than LIMIT_S."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT_S)) as session:
        yield session
