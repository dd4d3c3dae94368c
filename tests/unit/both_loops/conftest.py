"""Every async test in this folder runs on both event loops: plain asyncio and uvloop (the
router serves on uvloop, whose transports and callback order differ). pytest-asyncio's loop
factories hook parametrizes them; it reaches only the tests under this folder."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
import uvloop
from pytest_asyncio.plugin import LoopFactory

LOOPS: dict[str, LoopFactory] = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    return LOOPS
