"""The cache-hit path (issue 5): the router answering from its response cache vs the Python
floor (read body, hash, dict lookup, stored bytes; also with the headers every answer of the
router carries), with the audit trail on and off, side by side in one run. Server on CPU 0,
wrk on CPU 1; CPU µs per request from /proc; medians.

usage: python bench/cache_hit.py [--duration 5] [--repeats 3] [--concurrency 1,64]
Targets: cache hit ≤ 60 µs CPU per request; audit on vs off p99 overhead ≤ 2 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import orjson
from harness import ROUTER_BIN, load
from processes import HERE, PY, Server, free_port, log, stop_children_on_exit
from procstat import Usage, cpu_figures

EDGE_MODELS = HERE.parent / "edge_models"
BODY = {"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": [1, 0.5, 0]}]}
PATH = "/v2/models/color_classifier/infer"


def servers(tmp: Path) -> dict[str, tuple[list[str], dict[str, str], int | None]]:
    env = dict(os.environ, LAYER_ROUTER_STATE_DIR=str(tmp / "state"))
    made: dict[str, tuple[list[str], dict[str, str], int | None]] = {}
    for name, extra in (("floor", []), ("floor_headers", ["--headers"])):
        port = free_port()
        argv = [PY, str(HERE / "cache_floor_server.py"), "--port", str(port), *extra]
        made[name] = (argv, env, port)
    for name, audit in (("router", "{}"), ("router_no_audit", "{enabled: false}")):
        config = tmp / f"{name}.yaml"
        config.write_text(f"models: {{repository: {EDGE_MODELS}}}\naudit: {audit}\n")
        made[name] = ([ROUTER_BIN, "serve", "--config", str(config), "--port", "0"], env, None)
    return made


def cell(server: Server, conc: int, seconds: float, body: Path) -> dict[str, Any]:
    url = server.base + PATH
    load(url, conc, 1, "1", body)  # warm: the first request fills the cache
    before = Usage.now([server.pgid])
    result = load(url, conc, seconds, "1", body)
    after = Usage.now([server.pgid])
    result.update(cpu_figures(before, after, server.pgid, result["requests"], "0", ["0", "1"]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--json", type=Path, help="also write every cell here (bench/report.py)")
    args = parser.parse_args()
    concs = [int(c) for c in args.concurrency.split(",")]
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as folder, stop_children_on_exit():
        tmp = Path(folder)
        body = tmp / "body.json"
        body.write_bytes(orjson.dumps(BODY))
        for repeat in range(args.repeats):
            for name, (argv, env, port) in servers(tmp).items():
                server = Server(name, argv, "0", tmp / f"{name}.log", env, port).start()
                try:
                    for conc in concs:
                        r = cell(server, conc, args.duration, body)
                        results.setdefault((name, conc), []).append(r)
                        log(
                            f"rep {repeat} {name:16} c={conc:<3} {r['rps']:9,.0f} req/s "
                            f"cpu {r['cpu_us_per_req']:6.1f} µs/req p99 {r['p99_us']} µs "
                            f"errors {r['errors']}"
                        )
                finally:
                    server.stop()
    report(results, concs)
    if args.json is not None:
        cells = [
            {**row, "server": name, "conc": conc, "rep": rep}
            for (name, conc), rows in results.items()
            for rep, row in enumerate(rows, 1)
        ]
        args.json.write_text(orjson.dumps({"cells": cells}, option=orjson.OPT_INDENT_2).decode())


def med(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(results: dict[tuple[str, int], list[dict[str, Any]]], concs: list[int]) -> None:
    print("\n| server | conc | req/s | CPU µs/req | p50 µs | p99 µs | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (name, conc), rows in sorted(results.items()):
        print(
            f"| {name} | {conc} | {med(rows, 'rps'):,.0f} | {med(rows, 'cpu_us_per_req'):.1f} "
            f"| {med(rows, 'p50_us'):.0f} | {med(rows, 'p99_us'):.0f} "
            f"| {sum(r['errors'] for r in rows)} |"
        )
    print("\n| measure | conc | value | target | verdict |\n|---|---:|---:|---|---|")
    for conc in concs:
        floor = med(results[("floor", conc)], "cpu_us_per_req")
        hit = med(results[("router", conc)], "cpu_us_per_req")
        bare = med(results[("router_no_audit", conc)], "cpu_us_per_req")
        p99 = med(results[("router", conc)], "p99_us") - med(
            results[("router_no_audit", conc)], "p99_us"
        )
        print(
            f"| router cache hit CPU µs/req | {conc} | {hit:.1f} | ≤ 60 | "
            f"{'PASS' if hit <= 60 else 'MISS'} |"
        )
        print(f"| router/floor CPU per request | {conc} | {hit / floor:.2f}x | | |")
        dressed = med(results[("floor_headers", conc)], "cpu_us_per_req")
        print(f"| floor with the router's 8 headers, CPU µs/req | {conc} | {dressed:.1f} | | |")
        print(f"| audit on minus off, CPU µs/req | {conc} | {hit - bare:.1f} | | |")
        print(
            f"| audit on minus off, p99 ms | {conc} | {p99 / 1000:.3f} | ≤ 2 | "
            f"{'PASS' if p99 <= 2000 else 'MISS'} |"
        )


if __name__ == "__main__":
    main()
