"""The supervisor's port reservation (`--workers N`): a port whose last server's connections
linger in TIME_WAIT can be taken again at once, one that a program listens on cannot."""

from __future__ import annotations

import socket

import pytest

from router.workers import reserve_port


def _server_closed_connection_first() -> int:
    """A port left as a stopped server leaves it: its last connection in TIME_WAIT (the server
    closed first), no socket listening."""
    listener = socket.create_server(("127.0.0.1", 0))  # SO_REUSEADDR, as asyncio's servers
    port = int(listener.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server's side closes first: it keeps the TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    return port


def test_a_port_in_time_wait_is_reserved() -> None:
    """A site restarted right after it stopped under load gets its port back."""
    port = _server_closed_connection_first()
    with reserve_port("127.0.0.1", port) as reserved:
        assert reserved.getsockname()[1] == port


def test_a_listening_port_is_refused() -> None:
    """Another program's listening port stays refused."""
    with (
        socket.create_server(("127.0.0.1", 0)) as other,
        pytest.raises(OSError, match="in use"),
    ):
        reserve_port("127.0.0.1", other.getsockname()[1]).close()
