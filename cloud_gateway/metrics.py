"""The gateway's Prometheus metrics, on a registry of its own.

With several worker processes (``workers``), the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``
and every worker's counters, histograms and gauges live in files there; whichever worker
answers a scrape renders the sum over all of them (prometheus_client's multiprocess mode),
so one scrape sees the whole gateway. The queue-depth gauge is then sampled every second
instead of read at scrape time, because a worker cannot see the others' queues.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class GatewayMetrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        self._depths: Callable[[], dict[str, int]] | None = None
        self._published: set[tuple[str, str, str, str]] = set()
        labels = ["model", "version", "tenant", "outcome"]
        self.requests = Counter(
            "edgeserve_gateway_requests", "Inference requests", labels, registry=self.registry
        )
        self.errors = Counter(
            "edgeserve_gateway_errors",
            "Refused or failed requests by error code and front door",
            ["code", "protocol"],
            registry=self.registry,
        )
        self.throttled = Counter(
            "edgeserve_gateway_throttled",
            "Requests refused by their tenant's limits (rate: RateLimited, in flight: "
            "TooManyInFlight)",
            ["tenant", "limit"],
            registry=self.registry,
        )
        self.limiter_fallbacks = Counter(
            "edgeserve_gateway_rate_limit_store_fallbacks",
            "Token leases taken from this replica's own bucket because the shared store "
            "(Redis) could not be reached",
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgeserve_gateway_request_seconds",
            "End-to-end latency inside the gateway",
            ["model", "tenant"],
            buckets=LATENCY,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "edgeserve_gateway_queue_seconds",
            "Time a request waited in the batcher queue",
            ["model"],
            buckets=LATENCY,
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "edgeserve_gateway_compute_seconds",
            "Backend run time per batch",
            ["model"],
            buckets=LATENCY,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "edgeserve_gateway_batch_size",
            "Rows per executed batch",
            ["model"],
            buckets=BATCH_SIZES,
            registry=self.registry,
        )
        self.loaded = Gauge(
            "edgeserve_gateway_model_loaded",
            "1 per loaded model version",
            ["model", "version", "backend", "device"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.model_events = Counter(
            "edgeserve_gateway_model_events",
            "Model loads and evictions",
            ["model", "event"],
            registry=self.registry,
        )
        self.model_memory = Gauge(
            "edgeserve_gateway_model_memory_bytes",
            "Estimated memory per loaded model version",
            ["model", "version"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        # Experiments: added at each flush (every half second), not per request.
        self.experiment_requests = Counter(
            "edgeserve_gateway_experiment_requests",
            "Requests served by each arm of an experiment (shadow arms: mirrored copies)",
            ["experiment", "arm", "outcome"],
            registry=self.registry,
        )
        self.experiment_compared = Counter(
            "edgeserve_gateway_experiment_shadow_compared",
            "Rows a shadow answered, by whether its answer agreed with the control's",
            ["experiment", "agreed"],
            registry=self.registry,
        )
        self.experiment_dropped = Counter(
            "edgeserve_gateway_experiment_shadow_dropped",
            "Mirrored requests dropped because the shadow's queue was full",
            ["experiment"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "edgeserve_gateway_queue_depth",
            "Requests waiting per model",
            ["model"],
            registry=None,  # registered below only in multiprocess mode
            multiprocess_mode="livesum",
        )

    def publish_loaded(self, versions: list[tuple[str, str, str, str, int]]) -> None:
        """The loaded versions, as (model, version, backend, device, bytes) rows. An
        unloaded version's series drop out; in multiprocess mode, where series cannot be
        removed, they go to 0."""
        if self.multiprocess:
            for labels in self._published - {row[:4] for row in versions}:
                self.loaded.labels(*labels).set(0)
                self.model_memory.labels(*labels[:2]).set(0)
        else:
            self.loaded.clear()
            self.model_memory.clear()
        self._published = {row[:4] for row in versions}
        for model, version, backend, device, size in versions:
            self.loaded.labels(model, version, backend, device).set(1)
            self.model_memory.labels(model, version).set(size)

    def watch_queues(self, depths: Callable[[], dict[str, int]]) -> None:
        """Export ``depths()`` (model -> waiting requests), for autoscaling: at each scrape,
        or in multiprocess mode at each ``sample_queues``."""
        self._depths = depths
        if not self.multiprocess:
            self.registry.register(_QueueDepth(depths))

    def sample_queues(self) -> None:
        if self._depths is not None:
            for model, depth in self._depths().items():
                self.queue_depth.labels(model).set(depth)

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


class _QueueDepth(Collector):
    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self._depths = depths

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "edgeserve_gateway_queue_depth", "Requests waiting per model", labels=["model"]
        )
        for model, depth in sorted(self._depths().items()):
            family.add_metric([model], depth)
        yield family
