"""The Python serving floor: KServe v2 JSON -> onnxruntime -> JSON with nothing else in the way.

POST /v2/models/{model}/infer with the tensor in JSON `data`, or with the binary tensor extension
(Inference-Header-Content-Length). orjson parse -> np.asarray / np.frombuffer -> session.run
inline on the event loop -> orjson response. aiohttp + uvloop, one process, intra-op threads 1.
No validation, no queue, no deadline: the least a Python server can do per request. It only
counts session.run time per model (two perf_counter_ns calls), served on GET /stats/{model} as
{"count": N, "ns": total}, so the harness can split end-to-end time into model and the rest.

`--offload` runs session.run on a one-thread executor instead (a diagnostic: what the thread
hand-off alone costs, since the router never runs a model on its event loop).

usage: python bench/floor_server.py --model NAME=PATH [--model ...] [--port 0] [--offload]
Prints "listening on http://HOST:PORT" once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvloop
from aiohttp import web
from models import make_session
from serving import serve_forever


def build_app(sessions: dict[str, Any], offload: bool) -> web.Application:
    executor = ThreadPoolExecutor(1) if offload else None
    run_time = {name: [0, 0] for name in sessions}  # model -> [calls, ns in session.run]

    def run(name: str, feeds: dict[str, np.ndarray]) -> Any:
        t0 = time.perf_counter_ns()
        outputs = sessions[name].run(None, feeds)
        total = run_time[name]
        total[0] += 1
        total[1] += time.perf_counter_ns() - t0
        return outputs

    async def infer(request: web.Request) -> web.Response:
        name = request.match_info["model"]
        body = await request.read()
        header_length = request.headers.get("Inference-Header-Content-Length")
        if header_length is None:
            req = orjson.loads(body)
            inp = req["inputs"][0]
            x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
        else:
            n = int(header_length)
            req = orjson.loads(memoryview(body)[:n])
            inp = req["inputs"][0]
            x = np.frombuffer(body, dtype=np.float32, offset=n).reshape(inp["shape"])
        feeds = {inp["name"]: x}
        if executor is None:
            (probs,) = run(name, feeds)
        else:
            loop = asyncio.get_running_loop()
            (probs,) = await loop.run_in_executor(executor, run, name, feeds)
        out = {
            "model_name": name,
            "id": req.get("id", ""),
            "outputs": [
                {
                    "name": "probs",
                    "shape": list(probs.shape),
                    "datatype": "FP32",
                    "data": probs.ravel(),
                }
            ],
        }
        return web.Response(
            body=orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY),
            content_type="application/json",
        )

    async def stats(request: web.Request) -> web.Response:
        count, ns = run_time[request.match_info["model"]]
        return web.json_response({"count": count, "ns": ns})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_get("/stats/{model}", stats)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", action="append", default=[], help="NAME=PATH to model.onnx")
    ap.add_argument("--offload", action="store_true", help="session.run on a worker thread")
    args = ap.parse_args()
    sessions = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        sessions[name] = make_session(Path(path), threads=1)
    if not sessions:
        sys.exit("give at least one --model NAME=PATH")
    uvloop.run(serve_forever(build_app(sessions, args.offload), args.host, args.port, "floor"))


if __name__ == "__main__":
    main()
