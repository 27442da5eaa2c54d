"""The gateway's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
        )

    def watch_queues(self, depths: Callable[[], dict[str, int]]) -> None:
        """Export ``depths()`` (model -> waiting requests) at each scrape, for autoscaling."""
        self.registry.register(_QueueDepth(depths))

    def render(self) -> bytes:
        return generate_latest(self.registry)


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
