"""systemd's end of ``sd_notify``: a datagram socket that collects a service's messages.

Used where something plays the service manager for an agent — the tests of the notify
client and of the unit, and the demo's restart — so READY, STATUS, WATCHDOG and STOPPING
can be checked against a real socket. ``NotifyListener.abstract()`` binds an abstract
socket (no file to clean up); ``NotifyListener.at(path)`` binds a path. ``address`` is
the socket as ``NOTIFY_SOCKET`` spells it.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from pathlib import Path
from types import TracebackType


class NotifyListener:
    def __init__(self, sock: socket.socket, address: str, path: Path | None = None) -> None:
        self.sock = sock
        self.address = address
        self._path = path

    @classmethod
    def abstract(cls, prefix: str = "edgeserve-notify") -> NotifyListener:
        name = f"{prefix}-{secrets.token_hex(8)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(b"\0" + name.encode())
        return cls(sock, "@" + name)

    @classmethod
    def at(cls, path: Path) -> NotifyListener:
        """Bound at ``path`` (at most 107 bytes: the AF_UNIX limit), replacing a stale one."""
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        return cls(sock, str(path), path)

    def next(self, timeout: float = 5.0) -> str:
        """The next message; TimeoutError if none arrives within ``timeout`` seconds."""
        self.sock.settimeout(max(timeout, 1e-3))
        return self.sock.recv(4096).decode()

    def wait_for(self, field: str, timeout: float = 30.0) -> list[str]:
        """Messages up to and including the first carrying ``field`` (a ``KEY=value`` line);
        TimeoutError if it does not come within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            seen.append(self.next(deadline - time.monotonic()))
            if field in seen[-1].split("\n"):
                return seen

    def silent_for(self, field: str, seconds: float) -> bool:
        """True if no message carrying ``field`` arrives within ``seconds``."""
        try:
            self.wait_for(field, seconds)
        except TimeoutError:
            return True
        return False

    def count(self, field: str, within_s: float) -> int:
        """How many messages carrying ``field`` arrive within ``within_s`` seconds."""
        seen, deadline = 0, time.monotonic() + within_s
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                seen += field in self.next(left).split("\n")
        return seen

    def drain(self) -> None:
        """Forget the messages already queued."""
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while self.sock.recv(4096):
                pass

    def close(self) -> None:
        self.sock.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
