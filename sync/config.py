"""The sync service's configuration (TOML file + ``EDGESERVE_SYNC_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from edgeserve.mqtt import BrokerAddress
from edgeserve.settings import ServiceSettings, default_state_dir
from edgeserve.wire.errors import InvalidInput

SERVICE_USER = "edgeserve-sync"
# The admin bearer token, written once (0600) for the CLI; the service keeps only its hash.
TOKEN_FILE = "admin.token"
TOKEN_HASH_FILE = "admin.token.sha256"


class SyncConfig(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EDGESERVE_SYNC_", extra="forbid")
    required_files = ("broker_password_file", "broker_ca", "broker_cert", "broker_key")

    state_dir: Path = Field(
        default_factory=default_state_dir("sync"),
        description="registry, artifacts, payloads, operator key and admin token live here",
    )
    # -- broker ---------------------------------------------------------------------------
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(8883, ge=1, le=65535)
    broker_username: str = SERVICE_USER
    broker_password: str | None = Field(None, description="prefer broker_password_file")
    broker_password_file: Path | None = None
    broker_ca: Path | None = Field(None, description="CA of the broker; None = plain TCP")
    broker_cert: Path | None = None
    broker_key: Path | None = None
    broker_mqtt_version: int = Field(5, ge=4, le=5, description="5 = MQTT 5; 4 = MQTT 3.1.1")
    client_id: str = SERVICE_USER
    # -- admin API ------------------------------------------------------------------------
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(8720, ge=0, le=65535, description="0 = an ephemeral port")
    port_file: Path | None = Field(None, description='JSON {"admin": port}, written once ready')
    max_artifact_bytes: int = Field(1 << 30, ge=1024, description="largest upload accepted")
    # -- updates --------------------------------------------------------------------------
    chunk_size: int = Field(64 << 10, ge=1024, le=1 << 20, description="bytes per MQTT chunk")
    manifest_ttl_s: float = Field(7 * 86400.0, gt=60, description="manifest lifetime")
    request_window: int = Field(256, ge=1, le=4096, description="chunks served per request")
    tick_interval_s: float = Field(2.0, gt=0, description="rollout controller housekeeping")
    # -- bulk payloads over HTTP (control stays on MQTT) -----------------------------------
    bulk_dir: Path | None = Field(
        None, description="folder a static HTTP server serves; None = every payload over MQTT"
    )
    bulk_base_url: str | None = Field(
        None, description="the URL that serves bulk_dir, e.g. https://updates.example/payloads"
    )
    bulk_min_bytes: int = Field(
        4 << 20, ge=0, description="payloads this large or larger are also offered over HTTP"
    )
    # -- device certificates (sync/certs.py) ----------------------------------------------
    certs_broker_dir: Path | None = Field(
        None,
        description="broker setup folder whose fleet CA signs renewals and whose CRL and "
        "password file revocations change; None = renewals refused",
    )
    cert_approval: Literal["auto", "operator"] = Field(
        "auto", description="auto = sign for a device in good standing; operator = wait"
    )
    cert_validity_s: float = Field(365 * 86400.0, gt=0, description="renewed certificates live")
    cert_warn_s: float = Field(30 * 86400.0, ge=0, description="expiring-soon metric window")
    # -- rollout defaults (the CLI and API may override each) ------------------------------
    rollout_stages: list[float] = Field(default_factory=lambda: [0.5, 1.0])
    rollout_soak_s: float = Field(0.0, ge=0)
    rollout_max_failures: int = Field(1, ge=0)
    rollout_max_failure_rate: float = Field(0.2, ge=0, le=1)
    rollout_max_error_rate: float = Field(0.05, ge=0, le=1)
    # -- logs -----------------------------------------------------------------------------
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @model_validator(mode="after")
    def _bulk_needs_both(self) -> SyncConfig:
        if (self.bulk_dir is None) != (self.bulk_base_url is None):
            raise ValueError("bulk_dir and bulk_base_url go together: set both or neither")
        if self.bulk_base_url is not None and not self.bulk_base_url.startswith(
            ("https://", "http://")
        ):
            raise ValueError(f"bulk_base_url {self.bulk_base_url!r} is not an http(s) URL")
        return self

    @property
    def registry_path(self) -> Path:
        return self.state_dir / "registry.db"

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    def broker_address(self) -> BrokerAddress:
        return BrokerAddress(
            host=self.broker_host,
            port=self.broker_port,
            username=self.broker_username,
            password=self._password(),
            ca=self.broker_ca,
            cert=self.broker_cert,
            key=self.broker_key,
            protocol=5 if self.broker_mqtt_version == 5 else 4,
        )

    def _password(self) -> str | None:
        if self.broker_password_file is None:
            return self.broker_password
        try:
            return self.broker_password_file.read_text().strip()
        except OSError as exc:
            raise InvalidInput(f"cannot read broker password file: {exc}") from exc
