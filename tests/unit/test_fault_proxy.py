"""The fault proxy in front of a tiny real echo server, with real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from edgeserve.polling import wait_until
from edgeserve.testing import Fault, FaultMode, FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass  # the proxy resets connections on purpose


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False


@pytest.fixture
def echo() -> Iterator[int]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def proxy(echo: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo).run_in_thread() as running:
        yield running


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    return sock


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_it_listens_on_loopback_only(proxy):
    with connect(proxy) as sock:
        assert sock.getpeername() == ("127.0.0.1", proxy.port)
    # All of 127/8 is loopback on Linux: a wildcard bind would accept 127.0.0.2 as well.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", proxy.port), timeout=0.5).close()


def test_pass_through_forwards_both_ways_and_counts_bytes(proxy):
    with connect(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
        assert roundtrip(sock, b"x" * 200_000) == b"x" * 200_000
    stats = proxy.stats()
    assert stats.connections == 1
    assert stats.bytes_to_upstream == stats.bytes_to_client == 200_005
    wait_until(lambda: proxy.stats().active == 0, 2.0, "the proxy to drop its connections")


def test_delay_adds_latency_to_each_direction(proxy):
    with connect(proxy) as sock:
        started = time.perf_counter()
        roundtrip(sock, b"ping")
        fast = time.perf_counter() - started
        proxy.delay(0.1)
        started = time.perf_counter()
        assert roundtrip(sock, b"ping") == b"ping"
        slow = time.perf_counter() - started
    assert fast < 0.1
    assert slow >= 0.2


def test_stall_holds_bytes_until_lifted_then_delivers_them_in_order(proxy):
    with connect(proxy) as sock:
        assert roundtrip(sock, b"before") == b"before"
        proxy.stall()
        sock.settimeout(0.2)
        sock.sendall(b"held")
        with pytest.raises(TimeoutError):
            sock.recv(100)
        proxy.pass_through()
        sock.settimeout(2.0)
        assert sock.recv(100) == b"held"


def test_stall_also_holds_new_connections(proxy):
    proxy.stall()
    with connect(proxy, timeout=0.2) as sock:
        sock.sendall(b"anyone?")
        with pytest.raises(TimeoutError):
            sock.recv(100)
    assert proxy.stats().connections == 1


def test_reset_breaks_open_connections_with_a_connection_reset(proxy):
    with connect(proxy) as sock:
        assert roundtrip(sock, b"up") == b"up"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            roundtrip(sock, b"still there?")
    assert proxy.stats().resets >= 1


def test_reset_also_refuses_new_connections(proxy):
    proxy.reset()
    # The RST may even beat connect() back to the caller.
    with pytest.raises(ConnectionResetError), connect(proxy) as sock:
        roundtrip(sock, b"hello")
    proxy.pass_through()
    with connect(proxy) as sock:
        assert roundtrip(sock, b"back") == b"back"


def test_drop_after_bytes_cuts_the_connection_there(proxy):
    proxy.drop_after(10)
    with connect(proxy) as sock:
        sock.sendall(b"0123456789abcdef")
        received = b""
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(100):
                received += chunk
    assert len(received) <= 10
    assert proxy.stats().bytes_to_upstream == 10


def test_set_fault_switches_everything_at_once(proxy):
    proxy.set_fault(Fault(FaultMode.PASS, delay_s=0.05))
    assert proxy.fault.delay_s == 0.05
    proxy.pass_through()
    assert proxy.fault == Fault()


def test_it_runs_inside_an_event_loop_too(echo):
    async def scenario() -> bytes:
        async with FaultProxy("127.0.0.1", echo) as running:
            reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
            writer.write(b"async")
            data = await reader.readexactly(5)
            writer.close()
            await writer.wait_closed()
            return data

    assert asyncio.run(scenario()) == b"async"
