"""Fetching a payload's missing chunks from a static HTTP host with Range requests.

The signed manifest (over MQTT) lists each chunk's sha256; this module only moves bytes.
The chunks a download lacks are grouped into runs of adjacent chunks, each run is one
``Range: bytes=a-b`` request, and every chunk is handed to ``store`` (the updater's
``accept_chunk``: hash checked against the manifest, written into the same download
folder as a chunk from MQTT) as soon as its last byte arrives. So a cut connection
loses at most the chunk in flight per stream, and the next call asks only for what is
still missing — across reconnects and reboots alike, because the folder is the state.

A chunk whose bytes do not match is refused and listed in the report (the caller fetches
it again, from the host or over MQTT); a host that cannot be reached, answers without
honouring the range, or stops mid-way raises ``BulkUnavailable``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from edgeserve.wire.errors import IntegrityError, Unavailable
from edgeserve.wire.manifest import PayloadSpec

StoreChunk = Callable[[int, bytes], Awaitable[bool]]


class BulkUnavailable(Unavailable):
    """The HTTP host did not deliver (unreachable, an error status, a cut transfer)."""


@dataclass(slots=True)
class RangeReport:
    """What one fetch did: chunks stored, chunks refused for their hash, bytes received."""

    stored: int = 0
    refused: list[int] = field(default_factory=list)
    bytes: int = 0
    requests: int = 0


def chunk_runs(missing: Sequence[int], max_chunks: int) -> list[tuple[int, int]]:
    """``missing`` as (first, last) runs of adjacent indices, each at most ``max_chunks``."""
    runs: list[tuple[int, int]] = []
    for index in sorted(set(missing)):
        if runs and index == runs[-1][1] + 1 and index - runs[-1][0] < max_chunks:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


class RangeFetcher:
    """One HTTP client (TLS verified against ``ca``), ``streams`` Range requests at once."""

    def __init__(
        self,
        ca: Path | None = None,
        streams: int = 2,
        timeout_s: float = 30.0,
        max_request_bytes: int = 8 << 20,
    ) -> None:
        self.streams = streams
        self.max_request_bytes = max_request_bytes
        verify: ssl.SSLContext | bool = True
        if ca is not None:
            verify = ssl.create_default_context(cafile=str(ca))
        self._verify = verify
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
        self._client: httpx.AsyncClient | None = None

    async def fetch(
        self, url: str, spec: PayloadSpec, missing: Sequence[int], store: StoreChunk
    ) -> RangeReport:
        """Fetch chunks ``missing`` of the payload at ``url`` and store each one that verifies."""
        report = RangeReport()
        per_request = max(1, self.max_request_bytes // spec.chunk_size)
        runs = chunk_runs(missing, per_request)
        gate = asyncio.Semaphore(self.streams)

        async def one(run: tuple[int, int]) -> None:
            async with gate:
                await self._fetch_run(url, spec, run, store, report)

        await asyncio.gather(*(one(run) for run in runs))
        return report

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _fetch_run(
        self,
        url: str,
        spec: PayloadSpec,
        run: tuple[int, int],
        store: StoreChunk,
        report: RangeReport,
    ) -> None:
        first, last = run
        start = first * spec.chunk_size
        end = min((last + 1) * spec.chunk_size, spec.size) - 1
        headers = {"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"}
        report.requests += 1
        try:
            async with self.client.stream("GET", url, headers=headers) as response:
                _check_partial(response, start, end)
                index, pending = first, bytearray()
                async for block in response.aiter_bytes():
                    report.bytes += len(block)
                    pending += block
                    while index <= last and len(pending) >= _chunk_len(spec, index):
                        size = _chunk_len(spec, index)
                        await _store(store, index, bytes(pending[:size]), report)
                        del pending[:size]
                        index += 1
        except httpx.HTTPError as exc:
            raise BulkUnavailable(
                f"payload host {_host(url)}: {type(exc).__name__}: {exc}"
            ) from exc
        if index <= last:
            raise BulkUnavailable(
                f"payload host {_host(url)} ended the transfer at chunk {index} of {first}..{last}"
            )

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(verify=self._verify, timeout=self._timeout)
        return self._client


async def _store(store: StoreChunk, index: int, data: bytes, report: RangeReport) -> None:
    try:
        if await store(index, data):
            report.stored += 1
    except IntegrityError:
        report.refused.append(index)


def _check_partial(response: httpx.Response, start: int, end: int) -> None:
    """A 206 for exactly the range asked; a server that ignores Range would resend it all."""
    if response.status_code != 206:
        raise BulkUnavailable(
            f"payload host answered {response.status_code} to a Range request, not 206"
        )
    content_range = response.headers.get("content-range", "")
    if not content_range.startswith(f"bytes {start}-{end}/"):
        raise BulkUnavailable(f"payload host sent range {content_range!r}, not {start}-{end}")


def _chunk_len(spec: PayloadSpec, index: int) -> int:
    return min(spec.chunk_size, spec.size - index * spec.chunk_size)


def _host(url: str) -> str:
    return httpx.URL(url).netloc.decode()
