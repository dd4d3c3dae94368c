"""Fallback load generator, used only when wrk is not installed: closed loop over aiohttp.

N connections each keep one POST in flight for a fixed time; prints the same WRKJSON line as
wrk_post.lua. Python is far slower than wrk, so at high concurrency it may not saturate the
server: read req/s as a lower bound, CPU per request stays meaningful.
usage: python bench/closed_loop.py URL --connections N --seconds S --body FILE
       [--content-type T] [--header-length N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp
import uvloop


async def run(args: argparse.Namespace, body: bytes) -> dict[str, float]:
    headers = {"Content-Type": args.content_type}
    if args.header_length is not None:
        headers["Inference-Header-Content-Length"] = str(args.header_length)
    laps: list[int] = []
    counts = {"bytes": 0, "err_status": 0, "err_read": 0}
    connector = aiohttp.TCPConnector(limit=args.connections)
    start = time.perf_counter()
    end = start + args.seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter_ns()
            try:
                async with session.post(args.url, data=body, headers=headers) as response:
                    payload = await response.read()
                    counts["bytes"] += len(payload)
                    if response.status >= 400:
                        counts["err_status"] += 1
            except aiohttp.ClientError:
                counts["err_read"] += 1
            laps.append(time.perf_counter_ns() - t0)

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(args.connections)))
    duration = time.perf_counter() - start
    laps.sort()

    def pct(p: float) -> float:
        return laps[min(len(laps) - 1, int(len(laps) * p / 100))] / 1e3 if laps else 0.0

    return {
        "requests": len(laps),
        "duration_us": int(duration * 1e6),
        "bytes": counts["bytes"],
        "err_connect": 0,
        "err_read": counts["err_read"],
        "err_write": 0,
        "err_status": counts["err_status"],
        "err_timeout": 0,
        "mean_us": sum(laps) / len(laps) / 1e3 if laps else 0.0,
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
        "max_us": laps[-1] / 1e3 if laps else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--body", required=True)
    ap.add_argument("--content-type", default="application/json")
    ap.add_argument("--header-length", type=int)
    args = ap.parse_args()
    body = Path(args.body).read_bytes()
    print("WRKJSON " + json.dumps(uvloop.run(run(args, body))), flush=True)


if __name__ == "__main__":
    main()
