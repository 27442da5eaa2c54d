"""Shared plumbing of the HTTP front doors: listening sockets, uvicorn under our own
signal handling, and the port file supervisors and tests wait for.

The gateway and the sync service each run uvicorn beside other servers (gRPC, the MQTT
link) and stop them all in order from one SIGTERM handler of their own, so uvicorn must
not take the signals over; both learn their ports only after binding port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from edgeserve.listen import bind


def listening_socket(
    host: str, port: int, backlog: int = 1024, what: str = "HTTP"
) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Accepted sockets inherit this; uvicorn writes headers and body separately, and with
    # Nagle on each small answer would wait for the client's delayed ACK (~40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bind(sock, (host, port), what)
    sock.listen(backlog)
    return sock


class EmbeddedServer(uvicorn.Server):
    """uvicorn that leaves SIGTERM/SIGINT to the service and says when it accepts."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.accepting = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would take the signals over while serving and raise them again once it
        # has shut down, which the service's own handler would read as a second signal.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.accepting.set()


async def start_embedded(
    app: Any, sock: socket.socket, grace_s: float
) -> tuple[EmbeddedServer, asyncio.Task[None]]:
    """Serve ``app`` on ``sock``; returns once it accepts, or raises uvicorn's error."""
    server = EmbeddedServer(
        uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(grace_s),
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    accepting = asyncio.ensure_future(server.accepting.wait())
    await asyncio.wait([task, accepting], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        accepting.cancel()
        task.result()
    return server, task


def write_port_file(path: Path | None, ports: dict[str, int] | int) -> None:
    """Write the bound port(s) atomically: an int, or a JSON object, main port first."""
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ports))
    os.replace(tmp, path)
