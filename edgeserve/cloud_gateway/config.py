"""The gateway's configuration (TOML file + ``EDGESERVE_GATEWAY_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from edgeserve.settings import ServiceSettings, default_state_dir


class GatewayConfig(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EDGESERVE_GATEWAY_", extra="forbid")

    host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC with API keys")
    grpc_mtls_port: int | None = Field(
        8002, ge=0, le=65535, description="gRPC for devices: TLS with client certificates"
    )
    port_file: Path | None = Field(None, description="JSON of bound ports, written once ready")
    state_dir: Path = Field(default_factory=default_state_dir("gateway"))
    repository: Path | None = Field(None, description="model repository (default: state/models)")
    tenants_db: Path | None = Field(None, description="SQLite tenants (default: state/tenants.db)")
    pki_dir: Path | None = Field(None, description="CA and server cert (default: state/pki)")
    memory_budget_bytes: int = Field(2 << 30, ge=1 << 20)
    inference_threads: int = Field(2, ge=1)
    max_body_bytes: int = Field(16 << 20, ge=1024)
    preload: list[str] = Field(default_factory=list, description="models loaded at start")
    log_level: str = "INFO"
    log_format: str = "json"

    @property
    def repository_path(self) -> Path:
        return self.repository or self.state_dir / "models"

    @property
    def tenants_path(self) -> Path:
        return self.tenants_db or self.state_dir / "tenants.db"

    @property
    def pki_path(self) -> Path:
        return self.pki_dir or self.state_dir / "pki"
