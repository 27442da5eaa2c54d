"""Several gateway processes on one machine, sharing its ports: the supervisor.

One Python process serves about one core of requests, whatever the hardware, so with
``workers = N`` the gateway runs N complete worker processes that bind the same ports
with ``SO_REUSEPORT`` (the kernel spreads connections across them) and a supervisor that
owns what must be shared: the ports (reserved up front, so port 0 means one port for
all), the tenants' token buckets (``LeaseServer``, unless ``rate_limit_store`` points at
Redis), the metrics (each worker writes Prometheus multiprocess files that any worker's
/metrics sums), and the lifecycle: start all, write the port file once every worker is
ready, restart a worker that dies, stop all on SIGTERM/SIGINT.

What is per worker, by design: the model copies (memory x N; set the budget
accordingly), each model's batcher and fair queue (a flood and a compliant tenant land
on the same workers in proportion, so fairness holds per worker and so overall), and
in-flight caps (each worker bounds what it holds). The measurement that chose this over
one process is in docs/cloud-gateway.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cloud_gateway.config import GatewayConfig
from cloud_gateway.scheduler.lease_server import LeaseServer
from edgeserve.listen import bind
from edgeserve.serving import write_port_file

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 180.0
STOP_GRACE_S = 15.0
MAX_RESTARTS = 5  # within RESTART_WINDOW_S, then the supervisor gives up and exits
RESTART_WINDOW_S = 60.0
DOOR_NAMES = {"http": "OIP v2 REST", "grpc": "gRPC", "grpc_mtls": "gRPC (mTLS)"}


class Supervisor:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.run_dir = config.state_dir / "run"
        self.metrics_dir = self.run_dir / "metrics"
        self.ports: dict[str, int] = {}
        self._holders: list[socket.socket] = []
        self._workers: list[subprocess.Popen[bytes] | None] = [None] * config.workers
        self._restarts: list[float] = []
        self.leases = LeaseServer(self.run_dir / "leases.sock")

    async def run(self) -> int:
        from cloud_gateway.experiments import ExperimentStore
        from cloud_gateway.server import prepare_state
        from cloud_gateway.tenancy import TenantStore

        prepare_state(self.config)
        # Created or migrated once, here, not by N workers at once.
        TenantStore(self.config.tenants_path).close()
        ExperimentStore(self.config.experiments_path).close()
        self._prepare_run_dir()
        self._reserve_ports()
        if not self.config.rate_limit_store:
            await self.leases.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            for index in range(self.config.workers):
                self._start(index)
            if not await self._all_ready(stop):
                return 1
            write_port_file(self.config.port_file, self.ports)
            log.info("gateway listening", extra={**self.ports, "workers": self.config.workers})
            return await self._watch(stop)
        finally:
            await self._stop_all()
            await self.leases.close()
            for holder in self._holders:
                holder.close()

    # -- start -----------------------------------------------------------------------------

    def _prepare_run_dir(self) -> None:
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # a previous run's counters
        self.metrics_dir.mkdir(parents=True)
        self.run_dir.chmod(0o700)
        for stale in self.run_dir.glob("worker-*.ports"):
            stale.unlink()

    def _reserve_ports(self) -> None:
        """Bind every door's port (port 0: pick one) with SO_REUSEPORT and hold it, so all
        workers bind the same port and a port taken by someone else fails here, once."""
        wanted = {
            "http": self.config.http_port,
            "grpc": self.config.grpc_port,
            "grpc_mtls": self.config.grpc_mtls_port,
        }
        for door, port in wanted.items():
            if port is None:
                continue
            holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            bind(holder, (self.config.host, port), DOOR_NAMES[door])
            self._holders.append(holder)
            self.ports[door] = holder.getsockname()[1]

    def _start(self, index: int) -> None:
        env = {**os.environ, **self._worker_env(index)}
        command = [sys.executable, "-m", "edgeserve", "gateway", "run"]
        worker = subprocess.Popen(command, env=env)
        self._workers[index] = worker
        log.info("worker started", extra={"worker": index, "pid": worker.pid})

    def _worker_env(self, index: int) -> dict[str, str]:
        """The supervisor's resolved config, as the worker's environment (which wins over
        any file), with the reserved ports and the shared stores."""
        settings = self.config.model_dump(exclude_none=True, mode="json")
        settings.update(
            workers=1,
            port_file=str(self._port_file(index)),
            rate_limit_store=self.config.rate_limit_store or f"unix://{self.leases.path}",
        )
        env = {
            f"EDGESERVE_GATEWAY_{key.upper()}": value
            if isinstance(value, str)
            else json.dumps(value)
            for key, value in settings.items()
        }
        env.update(
            {f"EDGESERVE_GATEWAY_{door.upper()}_PORT": str(p) for door, p in self.ports.items()}
        )
        if "grpc_mtls" not in self.ports:
            env["EDGESERVE_GATEWAY_GRPC_MTLS_PORT"] = "off"
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        env["EDGESERVE_GATEWAY_WORKER_INDEX"] = str(index)
        return env

    def _port_file(self, index: int) -> Path:
        return self.run_dir / f"worker-{index}.ports"

    async def _all_ready(self, stop: asyncio.Event) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(self._port_file(i).exists() for i in range(self.config.workers)):
            failed = [
                i for i, w in enumerate(self._workers) if w is not None and w.poll() is not None
            ]
            if failed or stop.is_set() or time.monotonic() > deadline:
                reason = f"worker {failed[0]} exited" if failed else "stopped or timed out"
                log.error("gateway workers did not start", extra={"reason": reason})
                return False
            await asyncio.sleep(0.05)
        return True

    # -- run and stop ------------------------------------------------------------------------

    async def _watch(self, stop: asyncio.Event) -> int:
        while not stop.is_set():
            for index, worker in enumerate(self._workers):
                if worker is not None and worker.poll() is not None:
                    if not self._may_restart():
                        log.error("workers keep dying; stopping the gateway")
                        return 1
                    log.warning("worker died; restarting", extra={
                        "worker": index, "returncode": worker.returncode})  # fmt: skip
                    _mark_dead(worker.pid, self.metrics_dir)
                    self._start(index)
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                continue
        log.info("gateway stopping", extra={"workers": self.config.workers})
        return 0

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S] + [now]
        return len(self._restarts) <= MAX_RESTARTS

    async def _stop_all(self) -> None:
        running = [w for w in self._workers if w is not None and w.poll() is None]
        for worker in running:
            worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while any(w.poll() is None for w in running) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for worker in running:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for gone in self._workers:
            if gone is not None:
                _mark_dead(gone.pid, self.metrics_dir)
        log.info("gateway stopped")


def _mark_dead(pid: int, metrics_dir: Path) -> None:
    """Drop a gone worker's live gauges from the summed metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]


def _env_value(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)
