"""The gateway's configuration (TOML file + ``EDGESERVE_GATEWAY_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from edgeserve.settings import ServiceSettings, default_state_dir


class GatewayConfig(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EDGESERVE_GATEWAY_", extra="forbid")

    host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC with API keys")
    grpc_mtls_port: int | None = Field(
        8002,
        ge=0,
        le=65535,
        description='gRPC for devices: TLS with client certificates; "off" = not served',
    )
    port_file: Path | None = Field(None, description="JSON of bound ports, written once ready")
    state_dir: Path = Field(default_factory=default_state_dir("gateway"))
    repository: Path | None = Field(None, description="model repository (default: state/models)")
    tenants_db: Path | None = Field(None, description="SQLite tenants (default: state/tenants.db)")
    experiments_db: Path | None = Field(
        None, description="SQLite experiments and their counts (default: state/experiments.db)"
    )
    pki_dir: Path | None = Field(None, description="CA and server cert (default: state/pki)")
    # A real deployment brings its own server certificate and the CA that signs devices;
    # without them the gateway makes (and renews) a dev PKI under pki_dir.
    tls_cert: Path | None = Field(None, description="server certificate chain (PEM)")
    tls_key: Path | None = Field(None, description="server private key (PEM)")
    client_ca: Path | None = Field(None, description="CA that signs device certificates (PEM)")
    client_crl: Path | None = Field(
        None, description="revoked device certificates (the fleet CA's CRL); re-read on change"
    )
    memory_budget_bytes: int = Field(2 << 30, ge=1 << 20)
    inference_threads: int = Field(2, ge=1)
    workers: int = Field(
        1, ge=1, le=64, description="gateway processes sharing the ports (about one per core)"
    )
    max_body_bytes: int = Field(16 << 20, ge=1024)
    preload: list[str] = Field(
        default_factory=lambda: ["*"],
        description='models loaded at start ("*": all, as the memory budget allows)',
    )
    rate_limit_store: str | None = Field(
        None,
        description="redis://host:port/db: token buckets shared by every replica "
        "(default: each process limits on its own)",
    )
    access_log: bool = Field(False, description="one log line per request (costs throughput)")
    log_level: str = "INFO"
    log_format: str = "json"

    @field_validator("grpc_mtls_port", mode="before")
    @classmethod
    def _port_or_off(cls, value: Any) -> Any:
        # An environment variable cannot say None; "off" (or empty) can.
        if isinstance(value, str) and value.strip().lower() in ("", "off", "none"):
            return None
        return value

    @model_validator(mode="after")
    def _tls_files_together(self) -> Self:
        given = [self.tls_cert, self.tls_key, self.client_ca]
        if any(given) and not all(given):
            raise ValueError("tls_cert, tls_key and client_ca go together: give all three")
        return self

    @property
    def repository_path(self) -> Path:
        return self.repository or self.state_dir / "models"

    @property
    def tenants_path(self) -> Path:
        return self.tenants_db or self.state_dir / "tenants.db"

    @property
    def experiments_path(self) -> Path:
        return self.experiments_db or self.state_dir / "experiments.db"

    @property
    def pki_path(self) -> Path:
        return self.pki_dir or self.state_dir / "pki"
