"""The gateway process: one event loop running the REST server and both gRPC listeners.

Start-up order: tenants and PKI (generated on first start, never shipped), the
repository (seeded with the packaged models when empty), the listeners, then the
preloads (every model by default, as the memory budget allows); the bound ports are
written as JSON to ``port_file`` once all accept connections and the preloads are in.
Shutdown is staged: stop accepting, let in-flight requests finish (10 s grace), stop the
batchers, release the models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cloud_gateway.config import GatewayConfig
from cloud_gateway.core import GatewayCore
from cloud_gateway.experiments import Experiments
from cloud_gateway.grpc_server import create_grpc_server
from cloud_gateway.metrics import GatewayMetrics
from cloud_gateway.repository.manager import ModelRepository
from cloud_gateway.repository.seed import seed_repository
from cloud_gateway.rest import create_rest_app
from cloud_gateway.scheduler.shared_buckets import SharedRateLimiter
from cloud_gateway.tenancy import Authenticator, TenantStore
from edgeserve.logs import configure_logging
from edgeserve.security.pki import ensure_dev_pki
from edgeserve.serving import listening_socket, start_embedded, write_port_file

log = logging.getLogger(__name__)
GRACE_SECONDS = 10.0


def build_core(config: GatewayConfig, executor: ThreadPoolExecutor) -> GatewayCore:
    metrics = GatewayMetrics()

    def on_batch(model: str, version: str, size: int, waits: list[float]) -> None:
        metrics.batch_size.labels(model).observe(size)
        for wait in waits:
            metrics.queue_seconds.labels(model).observe(wait)

    def on_compute(model: str, seconds: float) -> None:
        metrics.compute_seconds.labels(model).observe(seconds)

    def on_change() -> None:
        metrics.publish_loaded(
            [
                (v.name, v.version, v.backend.name, v.backend.device, v.memory_bytes)
                for v in repository.loaded()
            ]
        )

    prepare_state(config)
    repository = ModelRepository(
        config.repository_path,
        config.memory_budget_bytes,
        executor,
        on_batch=on_batch,
        on_change=on_change,
        on_compute=on_compute,
        on_event=lambda kind, model: metrics.model_events.labels(model, kind).inc(),
    )
    metrics.watch_queues(
        lambda: {f"{v.name}/{v.version}": v.batcher.queue_depth for v in repository.loaded()}
    )
    authenticator = Authenticator(TenantStore(config.tenants_path))
    shared = None
    if config.rate_limit_store:
        shared = SharedRateLimiter(
            config.rate_limit_store, on_fallback=metrics.limiter_fallbacks.inc
        )
    experiments = Experiments(config.experiments_path, metrics)
    return GatewayCore(repository, authenticator, metrics, shared, experiments)


def prepare_state(config: GatewayConfig) -> None:
    """The one-time setup of a state folder: the repository (seeded when empty) and, for
    the device port without the operator's own files, the dev PKI. Worker processes share
    one folder, so their supervisor runs this (and migrates the tenants database) before
    starting them."""
    config.repository_path.mkdir(parents=True, exist_ok=True)
    if not any(config.repository_path.iterdir()):
        seed_repository(config.repository_path)
    if config.grpc_mtls_port is not None and config.tls_cert is None:
        ensure_dev_pki(config.pki_path, devices=[])


def device_tls(config: GatewayConfig) -> tuple[bytes, bytes, bytes]:
    """(client CA, server chain, server key) for the device port: the operator's files,
    or a dev PKI made under ``pki_dir``."""
    if config.tls_cert and config.tls_key and config.client_ca:
        files = (config.client_ca, config.tls_cert, config.tls_key)
    else:
        pki = ensure_dev_pki(config.pki_path, devices=[])
        files = (pki.ca.cert, pki.server.cert, pki.server.key)
    return files[0].read_bytes(), files[1].read_bytes(), files[2].read_bytes()


async def serve(config: GatewayConfig) -> None:
    executor = ThreadPoolExecutor(config.inference_threads, thread_name_prefix="inference")
    core = build_core(config, executor)
    assert core.experiments is not None
    await core.experiments.start(core.run_shadow)
    http_socket = listening_socket(config.host, config.http_port, what="OIP v2 REST")
    grpc_plain, grpc_port = create_grpc_server(core, config.host, config.grpc_port)
    servers = [grpc_plain]
    ports = {"http": http_socket.getsockname()[1], "grpc": grpc_port}
    if config.grpc_mtls_port is not None:
        grpc_mtls, ports["grpc_mtls"] = create_grpc_server(
            core, config.host, config.grpc_mtls_port, tls=device_tls(config), crl=config.client_crl
        )
        servers.append(grpc_mtls)
    for server in servers:
        await server.start()
    app = create_rest_app(core, config.max_body_bytes, access_log=config.access_log)
    rest, rest_task = await start_embedded(app, http_socket, GRACE_SECONDS)
    log.info("gateway listening", extra=ports)
    # Listening first: a request for a model still loading waits for it (never "not
    # ready"); /v2/health/ready and the port file say ready once the preloads are in.
    preloaded = await core.repository.preload(config.preload)
    core.started = True
    write_port_file(config.port_file, ports)
    log.info("gateway ready", extra={"preloaded": preloaded})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sampler = loop.create_task(_sample_queues(core, stop)) if core.metrics.multiprocess else None
    try:
        await stop.wait()
    finally:
        log.info("gateway stopping")
        core.started = False
        rest.should_exit = True
        await asyncio.gather(*(s.stop(GRACE_SECONDS) for s in servers))
        await rest_task
        if sampler is not None:
            await sampler
        await core.experiments.close()
        core.close()
        await core.repository.close()
        if core.shared_buckets is not None:
            await core.shared_buckets.close()
        executor.shutdown(wait=True, cancel_futures=True)
        log.info("gateway stopped")


async def _sample_queues(core: GatewayCore, stop: asyncio.Event) -> None:
    while not stop.is_set():
        core.metrics.sample_queues()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def run_gateway(config: GatewayConfig) -> None:
    configure_logging(config.log_level, config.log_format)
    if config.workers > 1:
        from cloud_gateway.workers import Supervisor

        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            code = runner.run(Supervisor(config).run())
        if code:
            raise SystemExit(code)
        return
    # uvloop where installed (uvicorn[standard] brings it): a cheaper event loop for every
    # request on every door; grpc.aio runs on it.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(config))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
