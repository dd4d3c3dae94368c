"""Locust scenarios (FastHttpUser) against the edge of a layer-router topology.

Each request's stats entry is named after what was asked and the tier that answered
(`X-Served-By-Tier`), so locust's own tables show where traffic went, e.g. `chat @central`.

    CacheHitUser        a few repeated v2 bodies: the edge cache answers
    LocalInferenceUser  fresh confident colours: local onnxruntime at the edge
    ChatUser            chat forwarded to central's (mock) LLM, plain and streamed
    ResidencyMixUser    inference, escalation and chat tagged with X-Data-Class
    OutageUser          the mix, while the switchboard cuts the regional tier mid-run

Env: LOADTEST_CONTROL_URL (the demo switchboard) and LOADTEST_OUTAGE="START,END" (seconds into
the run) drive the outage; without them OutageUser is the mix alone."""

from __future__ import annotations

import os
import random
import time
import urllib.request
from typing import Any

import gevent
from locust import between, events, task
from locust.contrib.fasthttp import FastHttpUser

from loadtest import bodies

JSON = {"Content-Type": "application/json"}
INFER = "/v2/models/color_classifier/infer"
PERSONAL = {"X-Data-Class": "personal"}
SECRET = {"X-Data-Class": "secret"}
INFER_V1 = "/v2/models/color_classifier/versions/1/infer"


class RouterUser(FastHttpUser):
    abstract = True
    wait_time = between(0.0, 0.02)

    def on_start(self) -> None:
        self.rng = random.Random()

    def send(
        self,
        label: str,
        path: str,
        body: bytes,
        expect: tuple[int, ...] = (200,),
        stream: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        """POST, judge the status (and a stream's end), file the stats under `label @tier`."""
        with self.client.post(
            path, data=body, headers={**JSON, **(headers or {})}, catch_response=True, name=label
        ) as resp:
            tier = resp.headers.get("X-Served-By-Tier", "none") if resp.headers else "none"
            resp.request_meta["name"] = f"{label} @{tier}"
            if resp.status_code not in expect:
                resp.failure(f"status {resp.status_code}")
            elif stream and resp.status_code == 200 and b"data: [DONE]" not in resp.content:
                resp.failure("stream ended without [DONE]")
            else:
                resp.success()


class CacheHitUser(RouterUser):
    @task
    def cached_infer(self) -> None:
        self.send("infer cached", INFER_V1, bodies.cached_rgb(self.rng))


class LocalInferenceUser(RouterUser):
    @task
    def local_infer(self) -> None:
        self.send("infer local", INFER_V1, bodies.fresh_rgb(self.rng))


class ChatUser(RouterUser):
    @task(3)
    def chat(self) -> None:
        self.send("chat", "/v1/chat/completions", bodies.chat(bodies.PLAIN))

    @task(1)
    def chat_stream(self) -> None:
        body = bodies.chat(bodies.PLAIN, stream=True)
        self.send("chat stream", "/v1/chat/completions", body, stream=True)


class ResidencyMixUser(RouterUser):
    @task(4)
    def local_infer(self) -> None:
        self.send("infer local", INFER_V1, bodies.fresh_rgb(self.rng))

    @task(2)
    def escalated_infer(self) -> None:
        self.send("infer escalated", INFER, bodies.doubtful_rgb(self.rng))

    @task(2)
    def personal_chat(self) -> None:
        """Personal data may leave the site redacted, within its jurisdiction."""
        body = bodies.chat(bodies.PERSONAL)
        self.send("chat personal", "/v1/chat/completions", body, headers=PERSONAL)

    @task(1)
    def secret_chat(self) -> None:
        """Secret data may not reach any upstream tier: refused with 403, by design."""
        body = bodies.chat(bodies.PLAIN)
        self.send("chat secret", "/v1/chat/completions", body, expect=(403,), headers=SECRET)

    @task(2)
    def plain_chat(self) -> None:
        self.send("chat", "/v1/chat/completions", bodies.chat(bodies.PLAIN))


class OutageUser(ResidencyMixUser):
    pass


def _switch(action: str) -> None:
    control = os.environ["LOADTEST_CONTROL_URL"]
    request = urllib.request.Request(f"{control}/{action}/regional", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=5) as resp:
        resp.read()
    print(f"loadtest: {action} regional at {time.strftime('%H:%M:%S')}", flush=True)


def _outage(start_s: float, end_s: float) -> None:
    gevent.sleep(start_s)
    _switch("cut")
    gevent.sleep(max(0.0, end_s - start_s))
    _switch("restore")


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _schedule_outage(environment: Any, **kwargs: Any) -> None:
    window = os.environ.get("LOADTEST_OUTAGE")
    if window and os.environ.get("LOADTEST_CONTROL_URL"):
        start, end = (float(x) for x in window.split(","))
        gevent.spawn(_outage, start, end)
