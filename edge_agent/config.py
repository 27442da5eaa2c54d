"""The edge agent's configuration: a TOML file of top-level keys (no table; see
``deploy/agent/agent.toml``), then ``EDGESERVE_AGENT_*`` in the environment, which wins."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from edgeserve.settings import ServiceSettings, default_state_dir


class AgentConfig(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EDGESERVE_AGENT_", extra="forbid")
    required_files = (
        "sync_password_file",
        "sync_ca",
        "sync_cert",
        "sync_key",
        "sync_http_ca",
        "operator_public_key",
        "cloud_ca",
        "cloud_cert",
        "cloud_key",
    )

    device_id: str = Field(default_factory=socket.gethostname)
    host: str = "127.0.0.1"
    port: int = Field(8710, ge=0, le=65535)
    unix_socket: Path | None = None
    port_file: Path | None = Field(None, description="written with the bound port once ready")
    state_dir: Path = Field(default_factory=default_state_dir("agent"))
    models: list[str] = Field(
        default_factory=lambda: ["digits-edge"],
        description="models to serve; seeded from the packaged artifacts on first start",
    )
    artifacts_dir: Path | None = Field(None, description="seed artifacts (default: packaged)")
    runtime_threads: int = Field(1, ge=1, description="threads per model session")
    inference_workers: int = Field(2, ge=1, description="threads running inference")
    max_pending: int = Field(64, ge=1, description="queued+running requests before 503")
    max_body_bytes: int = Field(4 << 20, ge=1024)
    max_batch: int = Field(64, ge=1)
    cache_entries: int = Field(4096, ge=0)
    cache_bytes: int = Field(16 << 20, ge=0)
    outbox_max_bytes: int = Field(64 << 20, ge=4096, description="disk budget of the outbox")
    # -- routing and escalation --------------------------------------------------------
    routing_mode: Literal["escalate", "hard_examples", "local"] = Field(
        "escalate",
        description="escalate hard requests, queue them as hard examples, or stay local",
    )
    cloud_target: str | None = Field(None, description="gateway gRPC host:port; None = offline")
    cloud_ca: Path | None = Field(None, description="CA that signed the gateway's certificate")
    cloud_cert: Path | None = Field(None, description="this device's client certificate")
    cloud_key: Path | None = Field(None, description="this device's private key")
    cloud_server_name: str = Field("localhost", description="name in the gateway certificate")
    cloud_api_key: str | None = Field(None, description="for a gateway port without mTLS")
    latency_budget_ms: float = Field(50.0, gt=0, description="default per-request budget")
    max_escalations: int = Field(16, ge=1, description="escalations in flight at once")
    breaker_failures: int = Field(3, ge=1, description="consecutive failures that open it")
    breaker_reset_s: float = Field(2.0, gt=0, description="open time before a probe")
    # -- fleet sync (MQTT) ----------------------------------------------------------------
    sync_broker: str | None = Field(None, description="MQTT broker host:port; None = no sync")
    sync_username: str | None = Field(None, description="broker user (default: device_id)")
    sync_password: str | None = Field(None, description="broker password")
    sync_password_file: Path | None = Field(None, description="file holding the password")
    sync_ca: Path | None = Field(None, description="CA that signed the broker's certificate")
    sync_cert: Path | None = Field(None, description="client certificate for the broker")
    sync_key: Path | None = Field(None, description="client private key for the broker")
    sync_chunk_window: int = Field(
        256, ge=1, le=4096, description="update chunks asked for at once (flow control)"
    )
    sync_chunk_timeout_s: float = Field(
        10.0, gt=0, description="ask again for chunks that have not arrived by then"
    )
    sync_mqtt_version: int = Field(5, ge=4, le=5, description="5 = MQTT 5; 4 = MQTT 3.1.1")
    sync_http: bool = Field(
        True, description="fetch payloads whose manifest names a URL with HTTP Range requests"
    )
    sync_http_ca: Path | None = Field(
        None, description="CA of the payload host (default: sync_ca, else the system's)"
    )
    sync_http_streams: int = Field(2, ge=1, le=16, description="Range requests at once")
    sync_http_timeout_s: float = Field(30.0, gt=0, description="per read from the payload host")
    operator_public_key: Path | None = Field(
        None, description="Ed25519 key updates must be signed with (required with sync)"
    )
    group: str = Field("default", description="fleet group reported to the sync service")
    labels: dict[str, str] = Field(default_factory=dict, description="reported labels")
    telemetry: bool = Field(True, description="record and upload per-request telemetry")
    telemetry_interval_s: float = Field(2.0, gt=0, description="upload tick")
    telemetry_batch_records: int = Field(500, ge=1, le=500, description="records per batch")
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @model_validator(mode="after")
    def _sync_needs_a_trust_anchor(self) -> AgentConfig:
        if self.sync_broker is None:
            return self
        if self.operator_public_key is None:
            raise ValueError(
                "sync_broker is set but operator_public_key is not: an agent that syncs "
                "must pin the operator's update-signing key (operator.pub)"
            )
        host, _, port = self.sync_broker.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"sync_broker {self.sync_broker!r} is not host:port")
        return self

    @property
    def sync_address(self) -> tuple[str, int] | None:
        """The broker's (host, port), or None when sync is off."""

        if self.sync_broker is None:
            return None
        host, _, port = self.sync_broker.rpartition(":")
        return host, int(port)

    def sync_secret(self) -> str | None:
        """The broker password, from the file if one is configured (read at start, once)."""
        if self.sync_password_file is not None:
            return self.sync_password_file.read_text().strip()
        return self.sync_password
