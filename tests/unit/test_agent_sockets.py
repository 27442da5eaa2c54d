"""The agent's listening sockets: loopback TCP without Nagle, and an optional unix socket."""

import socket

from edge_agent.config import AgentConfig
from edge_agent.server import bind_sockets


def test_tcp_socket_disables_nagle_so_responses_do_not_wait_for_delayed_acks(tmp_path):
    sockets = bind_sockets(AgentConfig(port=0, state_dir=tmp_path))
    try:
        assert sockets[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sockets[0].getsockname()[0] == "127.0.0.1"
    finally:
        for sock in sockets:
            sock.close()


def test_unix_socket_is_bound_when_configured(tmp_path):
    path = tmp_path / "agent.sock"
    sockets = bind_sockets(AgentConfig(port=0, state_dir=tmp_path, unix_socket=path))
    try:
        assert len(sockets) == 2 and path.exists()
    finally:
        for sock in sockets:
            sock.close()
