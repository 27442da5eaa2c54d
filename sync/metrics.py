"""The sync service's Prometheus metrics, on a registry of its own (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class SyncMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter(
            "edgeserve_sync_messages",
            "MQTT messages received from devices, by topic kind",
            ["kind"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "edgeserve_sync_rejected",
            "Device messages refused, by topic kind and reason",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.store_corrupt = Counter(
            "edgeserve_sync_store_corrupt",
            "Stored bytes found rotten on the sync service's disk, by what (payload, artifact)",
            ["what"],
            registry=self.registry,
        )
        self.chunks_served = Counter(
            "edgeserve_sync_chunks_served", "Update chunks published", registry=self.registry
        )
        self.chunk_bytes = Counter(
            "edgeserve_sync_chunk_bytes", "Update chunk bytes published", registry=self.registry
        )
        self.telemetry_records = Counter(
            "edgeserve_sync_telemetry_records",
            "Telemetry records received in batches (before dedup)",
            registry=self.registry,
        )
        self.acks = Counter(
            "edgeserve_sync_telemetry_acks", "Telemetry acks published", registry=self.registry
        )
        self.update_results = Counter(
            "edgeserve_sync_update_results",
            "Update outcomes reported by devices",
            ["outcome", "stage"],
            registry=self.registry,
        )
        self.issued = Counter(
            "edgeserve_sync_updates_issued",
            "Signed manifests issued, by payload encoding",
            ["encoding"],
            registry=self.registry,
        )
        self.payload_builds = Counter(
            "edgeserve_sync_payload_builds",
            "Update payloads built in the worker process, by outcome (done, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.payload_builds_running = Gauge(
            "edgeserve_sync_payload_builds_running",
            "Payload builds in the worker, by the stage each is on (queued, zstd, ...)",
            ["stage"],
            registry=self.registry,
        )
        self.rollouts = Gauge(
            "edgeserve_sync_rollouts",
            "Rollouts by state",
            ["state"],
            registry=self.registry,
        )
        self.devices_online = Gauge(
            "edgeserve_sync_devices_online",
            "Devices whose last status (or last will) said online",
            registry=self.registry,
        )
        self.mqtt_dropped = Gauge(
            "edgeserve_sync_mqtt_dropped",
            "Messages dropped because the receive queue was full",
            registry=self.registry,
        )

    def set_rollout_states(self, counts: dict[str, int]) -> None:
        self.rollouts.clear()
        for state, count in counts.items():
            self.rollouts.labels(state).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
