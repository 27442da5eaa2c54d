"""The agent daemon: load models, bind sockets, serve until SIGTERM, shut down in stages.

Under systemd (``Type=notify``) it sends READY=1 once the port accepts connections,
watchdog keep-alives while healthy, and STOPPING=1 when it starts to drain.
uvicorn installs the signal handlers (first SIGTERM/SIGINT drains, a second forces);
after it returns we say goodbye to the fleet broker (if sync is on), flush buffered
telemetry to the outbox, stop the inference threads and release the model sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from edge_agent.api import create_app
from edge_agent.config import AgentConfig
from edge_agent.core import AgentCore
from edge_agent.escalation import CircuitBreaker, EscalationClient, TlsFiles
from edge_agent.executor import BoundedExecutor
from edge_agent.outbox import Outbox
from edge_agent.recorder import TelemetryRecorder
from edge_agent.router import Router
from edge_agent.systemd import (
    Notifier,
    Watchdog,
    agent_health_check,
    inference_probe,
    watchdog_interval,
)
from edgeserve.extras import require
from edgeserve.listen import bind
from edgeserve.logs import configure_logging
from edgeserve.runtimes import RuntimeOptions
from edgeserve.serving import write_port_file

if TYPE_CHECKING:
    from edge_agent.sync.client import SyncClient

log = logging.getLogger(__name__)


class _AgentServer(uvicorn.Server):
    """A uvicorn server that announces itself once it accepts connections: the port file
    for supervisors that poll, READY=1 and the watchdog for systemd."""

    def __init__(
        self,
        config: uvicorn.Config,
        port_file: Path | None,
        port: int,
        notifier: Notifier,
        watchdog: Watchdog | None,
        ready_status: str,
    ) -> None:
        super().__init__(config)
        self._port_file = port_file
        self._port = port
        self._notifier = notifier
        self._watchdog = watchdog
        self._ready_status = ready_status

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        write_port_file(self._port_file, self._port)
        self._notifier.ready(self._ready_status)
        if self._watchdog is not None:
            self._watchdog.start()
        log.info("agent listening", extra={"port": self._port})

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._notifier.stopping("draining requests")
        if self._watchdog is not None:
            await self._watchdog.stop()
        await super().shutdown(sockets)


def bind_sockets(config: AgentConfig) -> list[socket.socket]:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this; uvicorn writes headers and body separately, and with
    # Nagle on, each response would wait for the client's delayed ACK (~40 ms).
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bind(tcp, (config.host, config.port), "the agent's API")
    sockets = [tcp]
    if config.unix_socket is not None:
        config.unix_socket.unlink(missing_ok=True)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bind(unix, str(config.unix_socket), "the agent's API")
        os.chmod(config.unix_socket, 0o660)
        sockets.append(unix)
    for sock in sockets:
        sock.listen(1024)
        sock.set_inheritable(True)
    return sockets


def build_router(
    config: AgentConfig,
    core: AgentCore,
    executor: BoundedExecutor,
    recorder: TelemetryRecorder | None = None,
) -> Router:
    """The router with its escalation client; must run inside the event loop (grpc.aio)."""
    escalation = None
    if config.cloud_target is not None and config.routing_mode == "escalate":
        from edge_agent.escalation import GrpcCloudTransport

        tls = None
        if config.cloud_ca and config.cloud_cert and config.cloud_key:
            tls = TlsFiles(config.cloud_ca, config.cloud_cert, config.cloud_key)
        transport = GrpcCloudTransport(
            config.cloud_target, tls, config.cloud_api_key, config.cloud_server_name
        )
        breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_s)
        escalation = EscalationClient(transport, breaker, config.max_escalations)
        core.metrics.watch_escalations(escalation.stats)
    # Per-request records only pile up when something uploads them.
    record_requests = config.telemetry and config.sync_broker is not None
    return Router(
        core,
        executor,
        escalation,
        recorder,
        config.routing_mode,
        config.latency_budget_ms / 1e3,
        record_requests=record_requests,
    )


def build_sync(
    config: AgentConfig, core: AgentCore, router: Router, outbox: Outbox
) -> SyncClient | None:
    """The fleet sync client and its updater, or None when no broker is configured."""
    if config.sync_broker is None:
        return None
    # Imported here: an agent without a broker never loads paho or the manifest checks.
    from edge_agent.sync.bulk import range_fetcher
    from edge_agent.sync.client import SyncClient, broker_address
    from edge_agent.sync.context import SyncContext
    from edge_agent.sync.telemetry import TelemetryUploader
    from edge_agent.updates import Updater
    from edgeserve.security.signing import load_public_key

    assert config.operator_public_key is not None  # AgentConfig refuses sync without it
    public_key = load_public_key(config.operator_public_key)

    def activate(name: str) -> None:
        core.load(name)  # hot swap: the next request is served by the new version

    updater = Updater(
        core.store,
        config.state_dir,
        public_key,
        activate=activate,
        device_id=config.device_id,
        runtime_options=RuntimeOptions(threads=config.runtime_threads),
    )
    metrics = core.metrics.sync
    context = SyncContext(
        device_id=config.device_id,
        core=core,
        router=router,
        updater=updater,
        public_key=public_key,
        metrics=metrics,
        outbox=outbox,
        group=config.group,
        labels=dict(config.labels),
        chunk_timeout_s=config.sync_chunk_timeout_s,
        window=config.sync_chunk_window,
        bulk=range_fetcher(config),
    )
    uploader = None
    if config.telemetry:
        uploader = TelemetryUploader(
            outbox,
            config.device_id,
            publish=lambda topic, payload: None,  # replaced by the client's link
            metrics=metrics,
            interval_s=config.telemetry_interval_s,
            max_records=config.telemetry_batch_records,
        )
    return SyncClient(broker_address(config), context, uploader)


def build_watchdog(
    notifier: Notifier, core: AgentCore, executor: BoundedExecutor
) -> Watchdog | None:
    """The systemd watchdog, when systemd asked for one (``WatchdogSec=``) and listens."""
    interval_s = watchdog_interval()
    if interval_s is None or not notifier.enabled:
        return None
    # Half an interval for the probe keeps the gap between pings under WatchdogSec.
    probe = inference_probe(executor, timeout_s=interval_s / 2)
    return Watchdog(notifier, interval_s, agent_health_check(core, probe))


async def _serve(
    config: AgentConfig, core: AgentCore, sockets: list[socket.socket], notifier: Notifier
) -> None:
    executor = BoundedExecutor(config.inference_workers, config.max_pending)
    outbox = Outbox(config.state_dir / "outbox.db", config.outbox_max_bytes)
    core.metrics.sync.watch_outbox(outbox.count, outbox.dropped_total)
    recorder = TelemetryRecorder(outbox, core.metrics.sync)
    recorder.start()
    router = build_router(config, core, executor, recorder)
    sync = build_sync(config, core, router, outbox)
    if sync is not None:
        sync.start()
    server_config = uvicorn.Config(
        create_app(core, router),
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=10,
    )
    port = sockets[0].getsockname()[1]
    server = _AgentServer(
        server_config,
        config.port_file,
        port,
        notifier,
        build_watchdog(notifier, core, executor),
        f"serving on {config.host}:{port}; models: {_model_list(core)}",
    )
    try:
        await server.serve(sockets=sockets)
    finally:
        if sync is not None:
            await sync.stop()  # publishes online=false, so no last will fires
        await router.close()
        await recorder.close()  # the last records reach the disk before it closes
        executor.shutdown()
        outbox.close()


def require_configured_extras(config: AgentConfig) -> None:
    """Stop before loading anything when a configured feature's extra is not installed."""
    if config.cloud_target is not None and config.routing_mode == "escalate":
        require("grpc", "escalation", "escalating to the cloud (cloud_target)")
    if config.sync_broker is not None:
        require("paho.mqtt.client", "fleet", "fleet sync (sync_broker)")


def run_agent(config: AgentConfig) -> None:
    """Run the agent in the foreground until it is asked to stop."""
    configure_logging(config.log_level, config.log_format)
    require_configured_extras(config)
    notifier = Notifier.from_environment()
    notifier.status("loading models")
    core = AgentCore.from_config(config)
    core.start()
    sockets = bind_sockets(config)
    try:
        with _absorb_reraised_signals():
            asyncio.run(_serve(config, core, sockets, notifier))
    finally:
        notifier.status("closing model sessions")
        notifier.close()
        core.close()
        if config.unix_socket is not None:
            config.unix_socket.unlink(missing_ok=True)
        log.info("agent stopped")


def _model_list(core: AgentCore) -> str:
    return ", ".join(core.model_names()) or "none"


@contextlib.contextmanager
def _absorb_reraised_signals() -> Iterator[None]:
    """Keep the stop signal uvicorn re-raises after draining from killing us mid-cleanup.

    uvicorn restores the previous handlers and re-raises SIGTERM/SIGINT once it has shut
    down; with the default handlers that would end the process before the executor and
    model sessions are closed. Signals can only be handled on the main thread.
    """
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in stop_signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
