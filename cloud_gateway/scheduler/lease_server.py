"""The token buckets of one machine's gateway workers, held by their supervisor.

Worker processes share a port (``SO_REUSEPORT``) and each run the whole gateway; what
must not be per process is a tenant's rate. The supervisor owns one ``TokenBucket`` per
tenant and grants leases of it over a unix socket, one line per call::

    -> "<tenant>\\t<rate_per_s>\\t<burst>\\t<want>\\n"
    <- "<granted>\\t<seconds until a token>\\n"

``SupervisorStore`` is the workers' side: a ``LeaseStore`` for ``SharedRateLimiter``, so
workers and Redis-backed replicas spend tokens the same way. The socket lives in the
gateway's private runtime folder (0700); only the gateway's own user can reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from cloud_gateway.scheduler.token_bucket import RateLimit, TenantLimiter
from edgeserve.wire.errors import Unavailable

MAX_LINE = 512


class LeaseServer:
    """Serves leases of per-tenant buckets on a unix socket at ``path``."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._buckets = TenantLimiter({}, clock=clock)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self.path.chmod(0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    def take(self, tenant: str, limit: RateLimit, want: int) -> tuple[int, float]:
        """Up to ``want`` whole tokens of the tenant's bucket: (granted, wait if none)."""
        return self._buckets.lease(tenant, limit, want)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(self._answer(line[:MAX_LINE]))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, line: bytes) -> bytes:
        try:
            tenant, rate, burst, want = line.decode().rstrip("\n").split("\t")
            granted, wait = self.take(tenant, RateLimit(float(rate), float(burst)), int(want))
        except (ValueError, UnicodeDecodeError):
            return b"0\t-1\n"  # the client reads a negative wait as a protocol error
        return f"{granted}\t{wait:.6f}\n".encode()


class SupervisorStore:
    """The worker's side: one connection to the supervisor, one call at a time."""

    def __init__(self, path: str, timeout_s: float) -> None:
        self._path = path
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def take(self, tenant: str, limit: RateLimit, want: int) -> tuple[int, float]:
        if "\t" in tenant or "\n" in tenant:
            raise ValueError("tenant names cannot hold tabs or newlines")
        request = f"{tenant}\t{limit.rate_per_s!r}\t{limit.burst!r}\t{want}\n".encode()
        async with self._lock, asyncio.timeout(self._timeout_s):
            try:
                reader, writer = await self._connection()
                writer.write(request)
                line = await reader.readline()
            except BaseException:
                await self.close()
                raise
        granted, wait = line.decode().split("\t")
        if float(wait) < 0:
            raise Unavailable("the supervisor refused the lease request")
        return int(granted), float(wait)

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_unix_connection(self._path)
        return self._reader, self._writer
