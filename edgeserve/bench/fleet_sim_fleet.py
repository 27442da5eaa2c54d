"""Many ``SimDevice``s on one event loop, in a thread of their own.

The benchmark's main thread drives the sync service's admin API and the broker process
while the devices live on a loop in a background thread (uvloop when installed). Each
device has its own TLS context with its own client certificate and its own broker
password, so the broker checks every one of them as it checks a real agent. Ticks are
spread over the second so a thousand devices do not send their telemetry in one burst.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.updates.ranges import RangeFetcher
from edgeserve.bench.fleet_sim_device import FleetCounters, SimDevice
from edgeserve.bench.fleet_sim_mqtt import SimLink, SimWill, sim_backoff
from edgeserve.broker import BrokerSetup
from edgeserve.wire import topics
from edgeserve.wire.sync_messages import RunningModel

TICK_SLICES = 10


class SimFleet:
    """``device_ids`` running ``model`` at ``running``, each publishing ``records_per_s``."""

    def __init__(
        self,
        setup: BrokerSetup,
        device_ids: list[str],
        model: str,
        running: RunningModel,
        public_key: Ed25519PublicKey,
        records_per_s: int = 10,
        http_ca: Path | None = None,
    ) -> None:
        self.model = model
        self.counters = FleetCounters()
        self._setup = setup
        self._fetcher = RangeFetcher(ca=http_ca, streams=1) if http_ca is not None else None
        self.devices = [
            SimDevice(d, model, running, public_key, self.counters, self._fetcher, records_per_s)
            for d in device_ids
        ]
        self.links: list[SimLink] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._started = threading.Event()

    # -- from the benchmark's thread -------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="fleet-sim", daemon=True)
        self._thread.start()
        if not self._started.wait(120):
            raise RuntimeError("the simulated fleet did not start")

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(60)

    def stop_telemetry(self) -> None:
        for device in self.devices:
            device.records_per_s = 0

    def connected(self, since: float = 0.0) -> int:
        """Devices connected now whose last connect was after ``since`` (monotonic)."""
        return sum(
            1
            for link in self.links
            if link.connected.is_set() and link.counters.last_connected >= since
        )

    def reconnected_at(self, since: float) -> list[float]:
        """Seconds from ``since`` to each device's latest connect after it, sorted."""
        return sorted(
            link.counters.last_connected - since
            for link in self.links
            if link.counters.last_connected >= since
        )

    def running(self, sha256: str) -> int:
        return sum(1 for device in self.devices if device.running.sha256 == sha256)

    def behind(self, sha256: str) -> dict[str, int]:
        """Devices not running ``sha256``, by what they are doing: downloading (and how
        they fetch), or idle with the desired revision they last took."""
        causes: dict[str, int] = {}
        for device, link in zip(self.devices, self.links, strict=True):
            if device.running.sha256 == sha256:
                continue
            if not link.connected.is_set():
                cause = "disconnected"
            elif device.download is None:
                cause = "idle (no newer desired state received)"
            elif device.download.http is not None:
                cause = "downloading over HTTP"
            else:
                cause = f"waiting for chunks ({len(device.download.have)} stored)"
            causes[cause] = causes.get(cause, 0) + 1
        return causes

    def broker_bytes(self) -> int:
        """Bytes every device sent to and received from the broker so far (TLS payload)."""
        return sum(link.counters.bytes_in + link.counters.bytes_out for link in self.links)

    # -- on the fleet's loop ---------------------------------------------------------------

    def _main(self) -> None:
        import uvloop

        uvloop.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        tasks = []
        for index, device in enumerate(self.devices):
            device.link = self._link(device, index)
            self.links.append(device.link)
        self._started.set()
        for link in self.links:
            tasks.append(asyncio.create_task(link.run()))
        tasks.append(asyncio.create_task(self._ticks()))
        while not self._stopped.is_set():
            await asyncio.sleep(0.1)
        tasks[-1].cancel()  # no more ticks
        # A clean DISCONNECT first (no last will), then the sessions end.
        await asyncio.gather(*(link.close() for link in self.links), return_exceptions=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._fetcher is not None:
            await self._fetcher.aclose()

    def _link(self, device: SimDevice, index: int) -> SimLink:
        address = self._setup.address(device.device_id)
        context = ssl.create_default_context(cafile=str(address.ca))
        assert address.cert is not None and address.key is not None
        context.load_cert_chain(address.cert, address.key)
        return SimLink(
            host=address.host,
            port=address.port,
            tls=context,
            client_id=device.device_id,
            username=device.device_id,
            password=address.password or "",
            will=SimWill(topics.status(device.device_id), device.status(False)),
            subscriptions=topics.device_subscriptions(device.device_id),
            on_message=device.on_message,
            on_connect=device.on_connect,
            backoff=sim_backoff(index),
        )

    async def _ticks(self) -> None:
        while True:
            for part in range(TICK_SLICES):
                start = time.monotonic()
                for device in self.devices[part::TICK_SLICES]:
                    await device.tick(start)
                await asyncio.sleep(max(0.0, 1.0 / TICK_SLICES - (time.monotonic() - start)))
