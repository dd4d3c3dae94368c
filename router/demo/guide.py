"""What the demo prints once every tier is ready: what runs where, and what to try."""

from __future__ import annotations

import json
from pathlib import Path

from router.demo.topology import ESCALATION_THRESHOLD, LLM_MODEL, Ports
from router.settings import Settings


def _json(doc: object) -> str:
    return json.dumps(doc, separators=(",", ":"))


def colour(*rgb: float) -> str:
    return _json({"inputs": [{"name": "rgb", "shape": [1, 3], "datatype": "FP32", "data": rgb}]})


FRAME = _json(
    {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 1, 8, 8],
                "datatype": "FP32",
                "data": [20] * 19 + [75] + [20] * 44,
            }
        ]
    }
)
PROMPT = "Please email jane.doe@example.com, card 4111 1111 1111 1111"


def chat(stream: bool = False) -> str:
    doc: dict[str, object] = {
        "model": LLM_MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    return _json({**doc, "stream": True} if stream else doc)


def _admin(ports: Ports) -> str:
    """The admin listener (issue 6) is there once the settings know it."""
    if "admin" not in Settings.model_fields:
        return ""
    edge = ports.admin["edge"]
    return f"""Watch it: curl -s localhost:{edge}/status ; curl -s localhost:{edge}/metrics
   (regional's admin port is {ports.admin["regional"]}, central's {ports.admin["central"]})

"""


def text(ports: Ports, root: Path) -> str:
    edge = f"localhost:{ports.edge}"
    control = f"localhost:{ports.control}"
    infer = f"curl -si {edge}/v2/models"
    post_chat = f"curl -si {edge}/v1/chat/completions -H 'Content-Type: application/json'"
    return f"""
layer-router demo: three real layer-router processes on loopback
  edge      http://{edge}   color_classifier v1/v2 (small, local)
  regional  http://localhost:{ports.regional}  hotspot_detector
  central   http://localhost:{ports.central}  color_classifier_large, and {LLM_MODEL}
  {LLM_MODEL}  http://localhost:{ports.llm}  a MOCK OpenAI-compatible upstream (echoes its input)
  switchboard http://{control}  cuts and restores the links between tiers
  configs, models and logs: {root}

Send everything to the edge; the X-Served-By-Tier and X-Route-Reason headers say what happened.

1. Routing: a confident colour stays at the edge (X-Served-By-Tier: edge)
   {infer}/color_classifier/infer -d '{colour(1, 1, 1)}'
   Send it again: X-Cache: HIT.
2. Escalation: dark green is "black" at 0.52 on the small edge model, below
   {ESCALATION_THRESHOLD}: central's large model (four shades per colour) answers green at 0.95
   {infer}/color_classifier/infer -d '{colour(0, 0.4, 0)}'
3. Forwarding: a model only the regional tier holds
   {infer}/hotspot_detector/infer -d '{FRAME}'
4. Redaction: the mock LLM at central echoes what reached it: the card and the email as tokens;
   the card is restored in the answer, the email comes back as the keyed pseudonym regional
   saw (X-Redactions counts them)
   {post_chat} -d '{chat()}'
   streaming: {post_chat} -N -d '{chat(stream=True)}'
   residency: add -H 'X-Data-Class: secret': no tier may see it, 403 (X-Route-Reason: residency:...)
5. Fallback: cut the regional tier; chat goes straight from the edge to central
   curl -s -X POST {control}/cut/regional     (then repeat 4; restore with /restore/regional)
6. Offline switch: cut every link; the edge answers locally, serves cached answers (X-Cache: HIT
   for their first 5 minutes, then STALE), and refuses what needs an upstream with 503 offline
   (once its health checks saw the links down: a request sent at once may get a 502)
   curl -s -X POST {control}/cut/all          (state: curl -s {control}/ ; restore: /restore/all)

{_admin(ports)}Python clients, unmodified:
   import tritonclient.http as t, numpy as np
   c = t.InferenceServerClient("{edge}")
   i = t.InferInput("rgb", [1, 3], "FP32"); i.set_data_from_numpy(np.array([[1, 0, 0]], np.float32))
   print(c.infer("color_classifier", [i]).as_numpy("probs"))

   from openai import OpenAI
   llm = OpenAI(base_url="http://{edge}/v1", api_key="unused")
   hi = [{{"role": "user", "content": "hi"}}]
   print(llm.chat.completions.create(model="{LLM_MODEL}", messages=hi))

Ctrl-C stops every tier.
"""
