"""Binding a service's listening addresses, with one clear line when that fails.

A port already taken, an address this machine lacks, a privileged port: each is the
operator's to fix, so it becomes a :class:`CannotListen` whose message names the
address and the fix, and the CLI prints that line instead of a traceback.
"""

from __future__ import annotations

import errno
import os
import socket

from edgeserve.wire.errors import EdgeServeError


class CannotListen(EdgeServeError):
    """A service could not bind one of its addresses; the message says what to change."""


_FIXES = {
    errno.EADDRINUSE: "another process listens there: stop it, or pick another port "
    "(0 = any free port, with --port-file to learn which)",
    errno.EADDRNOTAVAIL: "this machine has no such address: use 127.0.0.1, 0.0.0.0 or one "
    "of its own addresses",
    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE: pick a port above 1023",
}


def cannot_listen(what: str, address: str, error: OSError | None = None) -> CannotListen:
    """The one-line error for a failed bind, with the fix for the usual causes."""
    reason = os.strerror(error.errno) if error and error.errno else "the bind failed"
    fix = _FIXES.get(error.errno, "") if error and error.errno else ""
    if error is None:  # gRPC only says that it failed; a busy port is by far the usual cause
        fix = _FIXES[errno.EADDRINUSE]
    return CannotListen(
        f"cannot listen for {what} on {address}: {reason}" + (f"; {fix}" if fix else "")
    )


def bind(sock: socket.socket, address: tuple[str, int] | str, what: str) -> None:
    """``sock.bind(address)``, failing with :class:`CannotListen` instead of an OSError."""
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        shown = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
        raise cannot_listen(what, shown, exc) from None
