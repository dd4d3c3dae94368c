"""Time to first SSE event: sequential streaming chat requests over one keep-alive connection.

For each request: the time from sending it to the end of the first complete SSE event (the
first token a client could show), and to the end of the stream; the stream must end with
`data: [DONE]`. Prints one `SSEJSON {...}` line with percentiles in µs. Same client, same
connection reuse for every target, so differences between targets are what the hop adds.

usage: python bench/sse_client.py URL --body FILE [--requests 200] [--warmup 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop


async def run(url: str, body: bytes, requests: int, warmup: int) -> dict[str, Any]:
    first: list[float] = []
    total: list[float] = []
    events: list[int] = []
    errors = 0
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(warmup + requests):
            t0 = time.perf_counter()
            t_first = 0.0
            whole = bytearray()
            async with session.post(url, data=body, headers=headers) as response:
                async for chunk in response.content.iter_any():
                    whole += chunk
                    if not t_first and b"\n\n" in whole:
                        t_first = time.perf_counter()
            t_end = time.perf_counter()
            ok = response.status == 200 and bytes(whole).rstrip().endswith(b"data: [DONE]")
            if i < warmup:
                continue
            if not ok:
                errors += 1
                continue
            first.append((t_first - t0) * 1e6)
            total.append((t_end - t0) * 1e6)
            events.append(whole.count(b"\n\n"))
    return {
        "requests": requests,
        "errors": errors,
        "ttft_p50_us": _pct(first, 50),
        "ttft_p90_us": _pct(first, 90),
        "ttft_p99_us": _pct(first, 99),
        "ttft_mean_us": sum(first) / len(first) if first else 0.0,
        "total_p50_us": _pct(total, 50),
        "events": min(events) if events else 0,
    }


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] if ordered else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--body", required=True, type=Path)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    result = uvloop.run(run(args.url, args.body.read_bytes(), args.requests, args.warmup))
    print("SSEJSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
