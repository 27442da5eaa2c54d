"""A network namespace joined to the host by a veth pair, for partitions and flapping links.

``NetNamespace()`` is a context manager: entering creates a namespace and a veth pair
whose host end (``host_ip``) stays in the root namespace and whose peer (``inner_ip``)
moves into the new one, both on a private /30 derived from the process id so helpers
running side by side do not clash. A process started with ``command(argv)`` runs inside
it and reaches services of the root namespace at ``host_ip`` only, so those services
must listen there or on ``0.0.0.0``. Faults:

- ``partition()`` / ``heal()``: set the host end of the link down / up. Packets in either
  direction vanish while it is down; open TCP connections are not reset, they go
  silent and retransmit, as across a real network partition.
- ``flap(period_s, until)``: in a background thread, alternate down and up every
  ``period_s`` until the ``until`` event is set (the link is left up).

The filesystem is shared, so a namespaced agent stays reachable over its unix socket
while its link is down. Leaving the ``with`` block (also after a failure) deletes the
namespace and the veth pair. Needs root and ``ip`` (iproute2); ``available()`` says why
not where they are missing. Nothing here is imported by the services themselves.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import threading
from collections.abc import Sequence
from types import TracebackType

__all__ = ["NetNamespace", "NetnsError", "available"]

# Each namespace in a process takes the next /30; the pid picks the /16 block's start.
_counter = itertools.count()
_IP_TIMEOUT_S = 10.0


class NetnsError(RuntimeError):
    """An ``ip`` command failed while building, changing or removing a namespace."""


def available() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT_S, check=False
    )
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _subnet(pid: int, index: int) -> tuple[str, str]:
    """(host, inner) addresses of a /30 in 10.64.0.0/10 picked by pid and index."""
    block = (pid * 16 + index) % (1 << 20)  # 2^20 /30s fit in a /10
    base = (10 << 24) | (64 << 16) | (block << 2)
    return _dotted(base + 1), _dotted(base + 2)


def _dotted(value: int) -> str:
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


class NetNamespace:
    """One namespace with a veth link to the host; see the module docstring."""

    def __init__(self, label: str = "es") -> None:
        pid, index = os.getpid(), next(_counter)
        # Interface names are limited to 15 characters: label + pid + index stays under.
        tag = f"{label[:3]}{pid % 1_000_000}{index % 100}"
        self.name = f"{tag}-ns"
        self.host_link = f"{tag}h"
        self.inner_link = f"{tag}i"
        self.host_ip, self.inner_ip = _subnet(pid, index)
        self.partitions = 0
        self._flapper: threading.Thread | None = None
        self._created = False

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> NetNamespace:
        reason = available()
        if reason is not None:
            raise NetnsError(reason)
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _create(self) -> None:
        self._created = True
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.inner_link)
        _ip("link", "set", self.inner_link, "netns", self.name)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        self.exec_ip("addr", "add", f"{self.inner_ip}/30", "dev", self.inner_link)
        self.exec_ip("link", "set", self.inner_link, "up")
        self.exec_ip("link", "set", "lo", "up")

    def close(self) -> None:
        """Stop flapping and delete the link and the namespace; safe to call twice."""
        if self._flapper is not None:
            self._flapper.join(timeout=_IP_TIMEOUT_S)
            self._flapper = None
        if not self._created:
            return
        # Deleting one end of a veth deletes both; the namespace goes with its last user.
        _ip("link", "del", self.host_link, check=False)
        _ip("netns", "del", self.name, check=False)
        self._created = False

    # -- running things inside ----------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside the namespace (``ip`` execs it)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def exec_ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _ip("-n", self.name, *args)

    # -- faults -------------------------------------------------------------------------

    def partition(self) -> None:
        """Cut the link: nothing crosses until ``heal``."""
        _ip("link", "set", self.host_link, "down")
        self.partitions += 1

    def heal(self) -> None:
        _ip("link", "set", self.host_link, "up")

    @property
    def link_up(self) -> bool:
        return "state DOWN" not in _ip("link", "show", self.host_link).stdout

    def flap(self, period_s: float, until: threading.Event) -> threading.Thread:
        """Alternate down/up every ``period_s`` in a thread until ``until`` is set."""
        if self._flapper is not None and self._flapper.is_alive():
            raise NetnsError(f"{self.name} is already flapping")

        def run() -> None:
            try:
                while not until.wait(period_s):
                    self.partition()
                    if until.wait(period_s):
                        break
                    self.heal()
            finally:
                self.heal()

        self._flapper = threading.Thread(target=run, name=f"flap-{self.name}", daemon=True)
        self._flapper.start()
        return self._flapper
