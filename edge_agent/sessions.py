"""Runtime sessions shared by in-flight requests and closed when a hot swap retires them.

A hot swap replaces the served model between two requests, but requests that already
looked the old model up may still be running it on executor threads. Dropping the old
session without closing it kept a large model's memory until the last stray reference
went; closing it at once would pull it from under a running request. So each loaded
model carries :class:`SessionLeases`: a request borrows the session for as long as it
runs it, and :meth:`SessionLeases.retire` closes it now when no request holds it, or
when the last borrower returns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["SessionLeases"]


class SessionLeases:
    """Counts the requests using one session; ``close`` runs once, after retirement."""

    def __init__(self, close: Callable[[], None]) -> None:
        self._close = close
        self._lock = threading.Lock()
        self._borrowers = 0
        self._retired = False
        self.closed = False

    def acquire(self) -> None:
        """Borrow the session; the caller looked it up under the owner's swap lock."""
        with self._lock:
            self._borrowers += 1

    def release(self) -> None:
        with self._lock:
            self._borrowers -= 1
            close = self._retired and self._borrowers == 0 and not self.closed
            self.closed = self.closed or close
        if close:
            self._close()

    def retire(self) -> None:
        """No new borrower will come: close now, or when the last one returns."""
        with self._lock:
            self._retired = True
            close = self._borrowers == 0 and not self.closed
            self.closed = self.closed or close
        if close:
            self._close()
