"""Overload (TESTING.md R3, shortened to 8 s): twice the capacity offered open-loop; the excess
is shed fast with 503 + Retry-After, what is admitted is served, and memory stays bounded."""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import orjson

from router.testing import (
    AppThread,
    Behaviour,
    FakeUpstream,
    RouterThread,
    chat_forwarding_settings,
)

CHAT = "/v1/chat/completions"
IN_FLIGHT = 8
SERVICE_S = 0.2  # the upstream's answer time: capacity is IN_FLIGHT / SERVICE_S = 40/s
RATE = 2 * IN_FLIGHT / SERVICE_S
RUN_S = 8.0
BODY = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "load"}]})


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        return int(next(x for x in status if x.startswith("VmRSS:")).split()[1])


async def offer(url: str) -> list[tuple[int, str | None, float]]:
    """RATE requests a second for RUN_S, each on schedule whatever the others do."""
    results: list[tuple[int, str | None, float]] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one() -> None:
            started = time.monotonic()
            async with http.post(url + CHAT, data=BODY) as response:
                await response.read()
                took = time.monotonic() - started
                results.append((response.status, response.headers.get("Retry-After"), took))

        tasks = []
        begin = time.monotonic()
        for n in range(int(RATE * RUN_S)):
            await asyncio.sleep(max(0.0, begin + n / RATE - time.monotonic()))
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
    return results


def test_twice_the_capacity_is_shed_fast_and_memory_stays_bounded() -> None:
    """At 2x capacity every answer is 200 or 503 with Retry-After; refusals come back faster
    than one service time (median), at least 80% of capacity is served, the upstream never
    sees more than the in-flight cap at once, and RSS grows by under 64 MiB."""
    fake = FakeUpstream("central", behaviour=Behaviour(delay_s=SERVICE_S))
    with AppThread(fake.app) as upstream:
        settings = chat_forwarding_settings(upstream.url, limits={"max_in_flight": IN_FLIGHT})
        with RouterThread(settings) as router:
            before = rss_kib()
            results = asyncio.run(offer(router.url))
            grown_kib = rss_kib() - before
    statuses = {status for status, _, _ in results}
    assert statuses <= {200, 503}
    shed = [took for status, retry, took in results if status == 503 and retry == "1"]
    served = [took for status, _, took in results if status == 200]
    assert len(shed) + len(served) == len(results)
    assert statistics.median(shed) < SERVICE_S
    assert len(served) >= 0.8 * (IN_FLIGHT / SERVICE_S) * RUN_S
    arrivals = sorted(r.at for r in fake.received)
    assert max(_concurrent(arrivals, SERVICE_S)) <= IN_FLIGHT
    assert grown_kib < 64 * 1024


def _concurrent(arrivals: list[float], service_s: float) -> list[int]:
    """For each arrival, how many requests arrived within one service time before it (the
    upstream's concurrency, as each takes service_s)."""
    counts, start = [], 0
    for i, at in enumerate(arrivals):
        while arrivals[start] <= at - service_s * 0.9:
            start += 1
        counts.append(i - start + 1)
    return counts
