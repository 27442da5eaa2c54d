"""The agent's Prometheus metrics, on a registry of its own (no process-wide globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_agent.escalation import EscalationStats

LATENCY_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5, 2.0)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "edgeserve_agent_requests",
            "Inference requests by model and outcome",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "edgeserve_agent_errors",
            "Rejected or failed requests by error code",
            ["code"],
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "edgeserve_agent_inference_seconds",
            "Model run time, cache misses only",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cache = Counter(
            "edgeserve_agent_cache",
            "Result cache lookups by result",
            ["result"],
            registry=self.registry,
        )
        self.model_loaded = Gauge(
            "edgeserve_agent_model_loaded",
            "1 for each model version currently served",
            ["model", "version", "runtime"],
            registry=self.registry,
        )
        self.integrity_failures = Counter(
            "edgeserve_agent_integrity_failures",
            "Model slots whose bytes failed verification",
            ["model"],
            registry=self.registry,
        )

        self.sync = SyncMetrics(self.registry)

        # Bound once: a labels() lookup per request costs as much as a small model run.
        self.cache_hit = self.cache.labels("hit")
        self.cache_miss = self.cache.labels("miss")

    def watch_escalations(self, stats: Callable[[], EscalationStats]) -> None:
        """Export the escalation client's counters and breaker state at each scrape."""
        self.registry.register(_EscalationCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EscalationCollector(Collector):
    def __init__(self, stats: Callable[[], EscalationStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        outcomes = CounterMetricFamily(
            "edgeserve_agent_escalations", "Escalations by outcome", labels=["outcome"]
        )
        outcomes.add_metric(["ok"], stats.successes)
        for reason, count in sorted(stats.degraded.items()):
            outcomes.add_metric([reason], count)
        yield outcomes
        state = GaugeMetricFamily(
            "edgeserve_agent_breaker_open", "1 while the circuit breaker is open or half-open"
        )
        state.add_metric([], 0 if stats.breaker_state == "closed" else 1)
        yield state
        opened = CounterMetricFamily("edgeserve_agent_breaker_opened", "Times the breaker opened")
        opened.add_metric([], stats.breaker_opened)
        yield opened
        yield GaugeMetricFamily(
            "edgeserve_agent_escalations_in_flight",
            "Escalations waiting for the cloud",
            value=stats.in_flight,
        )


class SyncMetrics:
    """The sync client's and telemetry uploader's metrics (``edgeserve_agent_sync_*``,
    ``edgeserve_agent_telemetry_*``); a registry of its own in unit tests."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.messages = Counter(
            "edgeserve_agent_sync_messages",
            "MQTT messages received by topic kind",
            ["kind"],
            registry=registry,
        )
        self.rejected = Counter(
            "edgeserve_agent_sync_rejected",
            "MQTT messages ignored, by reason",
            ["reason"],
            registry=registry,
        )
        self.updates = Counter(
            "edgeserve_agent_sync_updates",
            "Model updates by result (installed, failed, refused)",
            ["result"],
            registry=registry,
        )
        self.connected = Gauge(
            "edgeserve_agent_sync_broker_connected",
            "1 while connected to the MQTT broker",
            registry=registry,
        )
        self.batches = Counter(
            "edgeserve_agent_telemetry_batches",
            "Telemetry batches by event (sent, resent, acked)",
            ["event"],
            registry=registry,
        )
        self.records_dropped = Counter(
            "edgeserve_agent_telemetry_recorder_dropped",
            "Records dropped in memory because the outbox could not keep up",
            registry=registry,
        )

    def watch_outbox(self, pending: Callable[[], int], dropped: Callable[[], int]) -> None:
        """Export the outbox's backlog and all-time drops at each scrape."""
        self.registry.register(_OutboxCollector(pending, dropped))


class _OutboxCollector(Collector):
    def __init__(self, pending: Callable[[], int], dropped: Callable[[], int]) -> None:
        self._pending = pending
        self._dropped = dropped

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "edgeserve_agent_telemetry_outbox_pending",
            "Records in the outbox waiting for an acknowledgement",
            value=self._pending(),
        )
        yield CounterMetricFamily(
            "edgeserve_agent_telemetry_outbox_dropped",
            "Records the outbox dropped under its disk budget, all time",
            value=self._dropped(),
        )
