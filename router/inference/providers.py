"""Choose an onnxruntime execution provider per model, falling back down the list to CPU.

Selection is a pure function of the preference list and what onnxruntime reports available;
session creation takes the session factory as a parameter so tests can inject failures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"

# Fastest first; CPU is the floor that is always there.
DEFAULT_ORDER: tuple[str, ...] = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "QNNExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    CPU,
)

SessionFactory = Callable[[list[tuple[str, dict[str, Any]]]], Any]


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Attempt:
    provider: str
    error: str


def candidates(
    preferred: Sequence[Candidate],
    available: Sequence[str],
    site_allowed: Sequence[str] = (),
) -> list[Candidate]:
    """Providers to try in order: the model's preference (or else the site's list, or else
    the default order), narrowed to what is installed and what the site allows; CPU always
    last."""
    wanted = list(preferred) or [Candidate(name, {}) for name in site_allowed or DEFAULT_ORDER]
    usable = set(available)
    allowed = set(site_allowed) | {CPU} if site_allowed else None
    chosen, seen = [], set()
    cpu = next((c for c in wanted if c.name == CPU), Candidate(CPU, {}))
    for cand in wanted:
        if cand.name in seen or cand.name not in usable or cand.name == CPU:
            continue
        if allowed is not None and cand.name not in allowed:
            continue
        seen.add(cand.name)
        chosen.append(cand)
    chosen.append(cpu)
    return chosen


def create_session(
    factory: SessionFactory, choices: Sequence[Candidate], model_label: str
) -> tuple[Any, str, list[Attempt]]:
    """The first session that can be created, the provider it runs on and the failed attempts."""
    attempts: list[Attempt] = []
    for cand in choices:
        # CPU stays behind an accelerator so nodes it cannot run still have a home.
        providers = [(cand.name, cand.options)]
        if cand.name != CPU:
            providers.append((CPU, {}))
        try:
            session = factory(providers)
        except Exception as exc:  # onnxruntime raises bare RuntimeError/Fail subclasses
            reason = _first_line(exc)
            attempts.append(Attempt(cand.name, reason))
            log.warning(
                "model %s: %s failed (%s); trying the next provider", model_label, cand.name, reason
            )
            continue
        used = session.get_providers()[0]
        return session, used, attempts
    tried = "; ".join(f"{a.provider}: {a.error}" for a in attempts)
    raise RuntimeError(f"no execution provider could load the model ({tried})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
