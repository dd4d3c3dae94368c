"""bench/forwarding.py --profile: py-spy on a proxy under load, and where its time goes."""

from __future__ import annotations

import argparse
import collections
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

from forwarding_measure import cell
from forwarding_targets import CHAT, make_server, start_mock
from harness import fmt, load
from processes import PY, log, run_child

PY_SPY = str(Path(PY).with_name("py-spy"))


def profile(args: argparse.Namespace, tmp: Path, stem: Path) -> int:
    """A proxy (the router by default) under c=`--profile-conc` load: first a plain cell for its
    CPU per request, then the same load with py-spy attached; raw stacks + a summary."""
    if not Path(PY_SPY).exists():
        log(f"{PY_SPY} not found: /work/venv/bin/pip install py-spy")
        return 2
    name, conc, seconds = args.profile_target, args.profile_conc, args.profile_seconds
    body = tmp / "chat.json"
    body.write_text(json.dumps(CHAT, separators=(",", ":")))
    raw = Path(f"{stem}.{name}.pyspy.txt")
    mock = start_mock(stem, args)
    try:
        server = make_server(name, mock, tmp, stem, 0, args).start()
        try:
            url = f"{server.base}/v1/chat/completions"
            load(url, conc, 2, args.load_cpu, body)
            plain = cell(name, url, conc, server.pgid, mock, body, args)
            log(
                f"{name} c={conc} without profiler: {plain['rps']:,.0f} req/s, "
                f"{plain['cpu_us_per_req']:.1f} µs CPU/req, other {plain['other_on_sut_pct']:.0f}%"
            )
            loaded: dict[str, Any] = {}

            def background() -> None:
                loaded.update(load(url, conc, seconds + 3, args.load_cpu, body))

            thread = threading.Thread(target=background)
            thread.start()
            time.sleep(1)
            argv = ["taskset", "-c", args.load_cpu, PY_SPY, "record", "-p", str(server.pgid)]
            argv += ["-r", "250", "-d", str(seconds), "-f", "raw", "-o", str(raw)]
            run_child(argv, None, timeout=seconds + 60)
            thread.join()
        finally:
            server.stop()
    finally:
        mock.stop()
    text = summarize_profile(raw, plain["cpu_us_per_req"])
    heading = (
        f"{name} ({args.router_label if name == 'router' else 'bench/naive_proxy.py'}), "
        f"c={conc}: {plain['rps']:,.0f} req/s and {plain['cpu_us_per_req']:.1f} µs CPU per "
        f"request without the profiler, {loaded.get('rps', 0):,.0f} req/s under py-spy "
        f"(-r 250, {seconds} s).\n\n"
    )
    Path(f"{stem}.{name}.pyspy.md").write_text(heading + text)
    print(heading + text)
    log(f"wrote {raw} and .md")
    return 0


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_CLIENT = {"client.py", "client_reqrep.py", "connector.py", "client_proto.py"}
_CLIENT_SIDE = "aiohttp client (request, pool, response)"
_SERVER_SIDE = "aiohttp server (protocol, request, response)"
_ROUTER_SIDE = "router/ code (and the stdlib/C it calls)"
_LOOP_SIDE = "event loop (uvloop, asyncio) and the rest"


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw.strip())
        out.append((m.group("func"), m.group("file")) if m else (raw.strip(), ""))
    return out


def _where(file: str) -> str:
    return "router/" + file.split("router/", 1)[1] if "router/" in file else file


_ROOTS = {"router/cli.py", "router/server.py", "router/__main__.py"}  # under every loop stack
_TRANSPORT = "router/upstreams/client.py"
# What the router's own time is spent on, by the module of the innermost router frame.
_AREAS = {
    "detection and redaction": (
        "router/redaction/",
        "router/stages/classify.py",
        "router/privacy.py",
        "router/policy/residency.py",
    ),
    "audit trail": ("router/audit/", "router/trail.py"),
    "response cache": ("router/stages/cache.py", "router/cache.py", "router/singleflight.py"),
    "forwarding (upstreams/, forwarding.py, headers.py)": (
        "router/upstreams/",
        "router/forwarding.py",
        "router/headers.py",
    ),
    "request context, pipeline, response (api/, pipeline.py)": (
        "router/api/",
        "router/pipeline.py",
        "router/context.py",
    ),
    "route decision": ("router/stages/route.py", "router/policy/", "router/budget.py"),
    "parse, dispatch": ("router/stages/parse.py", "router/stages/dispatch.py"),
}


def _area(module: str) -> str:
    return next((a for a, pre in _AREAS.items() if module.startswith(pre)), f"other: {module}")


def _kind(file: str) -> str:
    if "router/" in file:
        return "other" if _where(file) in _ROOTS else "router"
    if "aiohttp/" in file:
        return "client" if Path(file).name in _CLIENT else "aiohttp"
    return "other"


def _side(frames: list[tuple[str, str]]) -> tuple[str, str | None]:
    """Who a sample's time belongs to: the innermost frame that is the router's or aiohttp's
    (stdlib and C code count for whoever called them). Returns (side, innermost router frame
    when the router owns it)."""
    kinds = [_kind(file) for _, file in frames]
    # aiohttp's shared parts (streams, writer, helpers) work for the client when called from
    # the client or from the router's transport module (reading an upstream response).
    for_client = "client" in kinds or any(_where(f) == _TRANSPORT for _, f in frames)
    for (func, file), kind in zip(reversed(frames), reversed(kinds), strict=True):
        if kind == "router":
            return _ROUTER_SIDE, f"{func} ({_where(file)})"
        if kind == "client" or (kind == "aiohttp" and for_client):
            return _CLIENT_SIDE, None
        if kind == "aiohttp":
            return _SERVER_SIDE, None
    return _LOOP_SIDE, None


def summarize_profile(raw: Path, cpu_us_per_req: float | None = None) -> str:
    """Where the router's event-loop thread spends its samples: by side (router code, aiohttp
    server, aiohttp client, loop), by router/ module and function (inclusive and owned), and
    self time. Worker threads (inference, redaction, audit) are listed apart: py-spy counts a
    thread blocked on its queue as active."""
    total = idle = 0
    sides: collections.Counter[str] = collections.Counter()
    owned: collections.Counter[str] = collections.Counter()
    owned_modules: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if frames[0][0].startswith("Thread._bootstrap"):
            # Worker threads, mostly waiting on their queue (py-spy counts that as busy).
            idle += count
            threads[f"{frames[-1][0]} ({_where(frames[-1][1])})"] += count
            continue
        total += count
        side, router_frame = _side(frames)
        sides[side] += count
        if router_frame is None:
            areas[side] += count
        else:
            owned[router_frame] += count
            module = router_frame.rsplit("(", 1)[1].rstrip(")")
            owned_modules[module] += count
            areas[f"router: {_area(module)}"] += count
        inside = [(fn, _where(f)) for fn, f in frames if _kind(f) == "router"]
        for module in {where for _, where in inside}:
            modules[module] += count
        for name in {f"{fn} ({where})" for fn, where in inside}:
            functions[name] += count
        func, file = frames[-1]
        own[f"{func} ({_where(file)})"] += count

    def table(
        title: str, counts: collections.Counter[str], n: int, cpu: float | None = cpu_us_per_req
    ) -> list[str]:
        rows = [f"### {title}", "", "| % of loop samples | ≈ µs/request | where |"]
        rows.append("|---:|---:|---|")
        for key, c in counts.most_common(n):
            share = c / max(1, total)
            us = fmt(share * cpu, 1) if cpu else "—"
            rows.append(f"| {100 * share:.1f} | {us} | `{key}` |")
        return [*rows, ""]

    lines = [
        f"## py-spy profile of the proxy's event loop under load ({total} samples; "
        f"{idle} samples of worker threads apart, at the end)",
        "",
        "A sample belongs to the innermost frame that is the router's or aiohttp's; stdlib and "
        "C code count for their caller. aiohttp's writer and stream reader count as client "
        "when the stack holds a client call or the router's transport (router/upstreams/"
        "client.py).",
        "",
    ]
    lines += table("By side", sides, 10)
    lines += table("By area (router time by the module of its innermost frame)", areas, 20)
    lines += table("Owned by router/ module (innermost router frame)", owned_modules, 25)
    lines += table("Owned by router/ function (innermost router frame)", owned, 25)
    lines += table("Inclusive, by router/ module", modules, 20)
    lines += table("Inclusive, by router/ function", functions, 30)
    lines += table("Self time (leaf frame)", own, 30)
    title = "Worker threads, by leaf frame (mostly waiting on their queue: not CPU)"
    lines += table(title, threads, 10, None)
    return "\n".join(lines)
