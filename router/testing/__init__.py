"""A test kit shipped with the package (like starlette.testclient, structlog.testing): real
servers on loopback, fake upstreams that record every byte, a fault-injecting TCP proxy, and
tiny ONNX models. Tests of code built on layer-router can use it as ours do."""

from router.testing.faults import FaultProxy, Faults
from router.testing.models import (
    DATATYPES,
    identity_model,
    refusing_provider_builder,
    slow_session_builder,
    write_repository,
)
from router.testing.servers import (
    AppThread,
    RouterThread,
    central_chat_cluster,
    chat_forwarding_settings,
    router_in_front_of,
    serve_in_thread,
    serving,
    settings_for,
)
from router.testing.upstream import Behaviour, FakeUpstream, Recorded

__all__ = [
    "DATATYPES",
    "AppThread",
    "Behaviour",
    "FakeUpstream",
    "FaultProxy",
    "Faults",
    "Recorded",
    "RouterThread",
    "central_chat_cluster",
    "chat_forwarding_settings",
    "identity_model",
    "refusing_provider_builder",
    "router_in_front_of",
    "serve_in_thread",
    "serving",
    "settings_for",
    "slow_session_builder",
    "write_repository",
]
