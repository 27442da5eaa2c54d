"""A loopback TCP proxy whose faults can be switched while connections are open.

``FaultProxy(upstream_host, upstream_port)`` listens on 127.0.0.1 (an unused port, see
``.port``) and forwards bytes both ways. Faults, set with ``set_fault`` or the short
methods, apply to existing and new connections alike:

- ``pass_through()``: forward normally (clears every fault, the delay included).
- ``delay(s)``: sleep ``s`` before forwarding each chunk, in either direction.
- ``stall()``: accept connections and hold every byte; held bytes flow again, in order,
  once the fault is lifted — like a link that went silent, not one that lost data.
- ``reset()``: abort every connection with a TCP RST (``SO_LINGER`` 0), and new ones as
  soon as they are accepted.
- ``drop_after(n)``: reset a connection once it has forwarded ``n`` bytes in total
  (both directions, counted from the connection's start).
- ``blackhole()``: accept connections and discard every byte both ways, as a link that
  loses every packet; lifting it resets the connections that lost bytes (their streams
  are broken, as TCP would find after its retransmissions gave up).
- ``loss(fraction, seed)``: reset each new connection with probability ``fraction``
  (a seeded RNG, so a run can be repeated); TCP hides single lost packets as latency,
  so a lossy link shows up to an application as connections that break.

Async code uses ``await start()`` / ``await stop()`` (or ``async with``); sync tests use
``with FaultProxy(...).run_in_thread() as proxy:``, which runs it on its own event loop
in a background thread; every method may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from types import TracebackType
from typing import TypeVar

__all__ = ["Fault", "FaultMode", "FaultProxy", "ProxyStats"]

_CHUNK = 64 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)
T = TypeVar("T")


class FaultMode(StrEnum):
    PASS = "pass"
    STALL = "stall"
    RESET = "reset"
    BLACKHOLE = "blackhole"


@dataclass(frozen=True, slots=True)
class Fault:
    mode: FaultMode = FaultMode.PASS
    delay_s: float = 0.0
    drop_after_bytes: int | None = None
    loss: float = 0.0  # share of new connections reset on accept


@dataclass(frozen=True, slots=True)
class ProxyStats:
    connections: int
    active: int
    bytes_to_upstream: int
    bytes_to_client: int
    resets: int
    bytes_discarded: int = 0


class _Connection:
    """One accepted client socket, its stream once wrapped, and its upstream twin."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.client: asyncio.StreamWriter | None = None
        self.upstream: asyncio.StreamWriter | None = None
        self.forwarded = 0
        self.lost = False  # bytes were discarded by a blackhole: the stream is broken
        self.task: asyncio.Task[None] | None = None

    def abort(self) -> None:
        """RST both sides and stop the connection's task (which closes a bare socket)."""
        _linger_zero(self.sock)
        if self.client is not None:
            self.client.transport.abort()
        if self.upstream is not None:
            _linger_zero(self.upstream.get_extra_info("socket"))
            self.upstream.transport.abort()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self._fault = Fault()
        self._listener: socket.socket | None = None
        self._socks: set[socket.socket] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flowing = asyncio.Event()  # set unless stalled; binds to a loop on first use
        self._loop_thread = 0
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._counts = {"connections": 0, "up": 0, "down": 0, "resets": 0, "discarded": 0}
        self._random = random.Random(0)
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        self._apply(self._fault)
        # A bare listening socket rather than asyncio.start_server: every accepted socket
        # is ours from the first instant, so stop() can close all of them (3.11's Server
        # does not track connections it is still setting up).
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.setblocking(False)
        self._listener, self.port = listener, listener.getsockname()[1]
        # Accepting in a reader callback, not with loop.sock_accept: a cancelled
        # sock_accept can drop a socket it has just accepted.
        self._loop.add_reader(listener, self._accept, listener)

    async def stop(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener)
            self._listener.close()
            self._listener = None
        for connection in list(self._connections):
            connection.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        await _close_all(list(self._writers))
        # A task cancelled before its first step never ran its ``finally``.
        for sock in self._socks:
            sock.close()
        self._socks.clear()
        # A transport torn down mid-setup frees its socket on the next loop turns.
        for _ in range(3):
            await asyncio.sleep(0)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[FaultProxy]:
        """Run the proxy on its own event loop in a daemon thread for the ``with`` block."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fault-proxy", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=10)
            yield self
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    # -- faults -------------------------------------------------------------------------

    @property
    def fault(self) -> Fault:
        return self._fault

    def set_fault(self, fault: Fault) -> None:
        """Switch to ``fault`` now; safe from any thread and with connections open."""
        self._on_loop(lambda: self._apply(fault))

    def pass_through(self) -> None:
        """Back to normal: no delay, no stall, no reset, no drop."""
        self.set_fault(Fault())

    def delay(self, seconds: float) -> None:
        self.set_fault(replace(self._fault, delay_s=seconds))

    def stall(self) -> None:
        self.set_fault(replace(self._fault, mode=FaultMode.STALL))

    def reset(self) -> None:
        self.set_fault(replace(self._fault, mode=FaultMode.RESET))

    def drop_after(self, n_bytes: int) -> None:
        self.set_fault(replace(self._fault, mode=FaultMode.PASS, drop_after_bytes=n_bytes))

    def blackhole(self) -> None:
        self.set_fault(replace(self._fault, mode=FaultMode.BLACKHOLE))

    def loss(self, fraction: float, seed: int = 0) -> None:
        """Reset each new connection with probability ``fraction`` (0..1)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"loss fraction {fraction} is not within 0..1")
        self._random.seed(seed)
        self.set_fault(replace(self._fault, loss=fraction))

    def stats(self) -> ProxyStats:
        return self._on_loop(
            lambda: ProxyStats(
                connections=self._counts["connections"],
                active=len(self._connections),
                bytes_to_upstream=self._counts["up"],
                bytes_to_client=self._counts["down"],
                resets=self._counts["resets"],
                bytes_discarded=self._counts["discarded"],
            )
        )

    def _apply(self, fault: Fault) -> None:
        self._fault = fault
        if fault.mode is FaultMode.STALL:
            self._flowing.clear()
        else:
            self._flowing.set()
        if fault.mode is FaultMode.RESET:
            for connection in list(self._connections):
                self._reset(connection)
        elif fault.mode is not FaultMode.BLACKHOLE:
            for connection in [c for c in self._connections if c.lost]:
                self._reset(connection)
        elif fault.drop_after_bytes is not None:
            for connection in list(self._connections):
                if connection.forwarded >= fault.drop_after_bytes:
                    self._reset(connection)

    def _on_loop(self, action: Callable[[], T]) -> T:
        """Run ``action`` on the proxy's loop thread, waiting for it from other threads."""
        loop = self._loop
        if loop is None or loop.is_closed() or threading.get_ident() == self._loop_thread:
            return action()

        async def run() -> T:
            return action()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=10)

    # -- forwarding ---------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:  # BlockingIOError: none left; anything else: try next time
                return
            sock.setblocking(False)
            connection = _Connection(sock)
            self._socks.add(sock)
            self._counts["connections"] += 1
            self._connections.add(connection)
            task = asyncio.get_running_loop().create_task(self._handle(connection))
            connection.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, connection: _Connection) -> None:
        try:
            await self._serve(connection)
        except (OSError, asyncio.IncompleteReadError):
            connection.abort()
        finally:
            self._connections.discard(connection)
            if connection.client is None:
                connection.sock.close()
            self._socks.discard(connection.sock)
            writers = [w for w in (connection.client, connection.upstream) if w is not None]
            await _close_all(writers)
            self._writers.difference_update(writers)

    async def _serve(self, connection: _Connection) -> None:
        dropped = self._fault.loss > 0 and self._random.random() < self._fault.loss
        if self._fault.mode is FaultMode.RESET or dropped:
            self._reset(connection)
            return
        reader, connection.client = await asyncio.open_connection(sock=connection.sock)
        self._writers.add(connection.client)
        await self._flowing.wait()
        up_reader, connection.upstream = await asyncio.open_connection(
            self.upstream_host, self.upstream_port
        )
        self._writers.add(connection.upstream)
        await asyncio.gather(
            self._pump(connection, reader, connection.upstream, "up"),
            self._pump(connection, up_reader, connection.client, "down"),
        )

    async def _pump(
        self,
        connection: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                await self._flowing.wait()
                if self._fault.delay_s > 0:
                    await asyncio.sleep(self._fault.delay_s)
                    await self._flowing.wait()
                if not await self._forward(connection, writer, data, direction):
                    return
            await self._flowing.wait()  # a stalled link holds the FIN too
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            # Either side broke: break the other one too, which also stops our twin pump.
            connection.abort()

    async def _forward(
        self, connection: _Connection, writer: asyncio.StreamWriter, data: bytes, direction: str
    ) -> bool:
        """Forward ``data``, or as much as ``drop_after_bytes`` allows; False after a reset."""
        if self._fault.mode is FaultMode.BLACKHOLE:
            connection.lost = True
            self._counts["discarded"] += len(data)
            return True
        limit = self._fault.drop_after_bytes
        cut = limit is not None and connection.forwarded + len(data) >= limit
        if limit is not None and cut:
            data = data[: max(0, limit - connection.forwarded)]
        if data:
            writer.write(data)
            await writer.drain()
            connection.forwarded += len(data)
            self._counts[direction] += len(data)
        if cut:
            self._reset(connection)
        return not cut

    def _reset(self, connection: _Connection) -> None:
        self._counts["resets"] += 1
        self._connections.discard(connection)
        connection.abort()


def _linger_zero(sock: socket.socket | None) -> None:
    """Make the next close send a TCP RST rather than a FIN: the peer sees ECONNRESET."""
    if sock is not None and sock.fileno() >= 0:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


async def _close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        if not writer.is_closing():
            writer.close()
    for writer in writers:
        with contextlib.suppress(Exception):
            await writer.wait_closed()
