"""A whole fleet on one machine: broker, sync service and agents as real processes.

The demo, the end-to-end tests and the fleet benchmark all need the same thing — a
broker with per-device credentials and certificates, the sync service holding the
operator key, and agents that pin its public half and connect with their own identity —
so it is built here once. Everything lives under one work folder; ``stop`` ends the
processes with SIGTERM and returns their exit codes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgeserve.artifacts import packaged_artifacts
from edgeserve.broker import BrokerSetup, EmbeddedBroker, MosquittoProcess, start_broker
from edgeserve.durable import write_private
from edgeserve.processes import ServiceProcess, agent_process, free_port, sync_process
from edgeserve.security.pki import ensure_dev_pki
from edgeserve.security.signing import PUBLIC_NAME, ensure_operator_key
from edgeserve.wire.errors import DeadlineExceeded
from edgeserve.wire.model_card import CARD_SUFFIX, ModelCard
from sync.admin_client import AdminClient

SYNC_USER = "edgeserve-sync"
# A second service login for whoever acts as the fleet beside the running sync service
# (tests, the demo's forger): the broker allows one connection per username.
OPERATOR_USER = "edgeserve-operator"
FINAL_ROLLOUT_STATES = frozenset({"completed", "halted", "rolled_back", "superseded"})
BASELINE_MODELS = ("digits-edge",)
BrokerKind = Literal["auto", "mosquitto", "embedded"]


@dataclass
class FleetStack:
    workdir: Path
    setup: BrokerSetup
    broker: MosquittoProcess | EmbeddedBroker
    sync: ServiceProcess
    agents: dict[str, ServiceProcess] = field(default_factory=dict)
    agent_overrides: dict[str, str] = field(default_factory=dict)

    @property
    def sync_state(self) -> Path:
        return self.workdir / "sync-state"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.sync.ports['admin']}"

    @property
    def operator_public_key(self) -> Path:
        return self.sync_state / "keys" / PUBLIC_NAME

    def admin(self) -> AdminClient:
        token = (self.sync_state / "admin.token").read_text().strip()
        return AdminClient(self.admin_url, token)

    def agent_url(self, device: str) -> str:
        return f"http://127.0.0.1:{self.agents[device].port}"

    def agent_settings(self, device: str) -> dict[str, str]:
        """The ``EDGESERVE_AGENT_*`` settings that enroll ``device`` with this fleet."""
        address = self.setup.address(device)
        settings = {
            "device_id": device,
            "sync_broker": f"{address.host}:{address.port}",
            "sync_password": address.password or "",
            "sync_ca": str(address.ca),
            "sync_cert": str(address.cert),
            "sync_key": str(address.key),
            "sync_mqtt_version": "5" if self.broker.supports_mqtt5 else "4",
            "operator_public_key": str(self.operator_public_key),
            "telemetry_interval_s": "0.2",
            "cache_entries": "0",
        }
        return settings | self.agent_overrides

    def start_agent(self, device: str, **settings: str) -> ServiceProcess:
        if device not in self.setup.users():
            self.setup.add_device(device)
        settings = self.agent_settings(device) | settings
        process = agent_process(self.workdir, name=device, **settings)
        self.agents[device] = process
        process.start()
        return process

    def register_packaged(self, models: Iterable[str]) -> None:
        """Register the packaged versions the agents start with, so updates can be deltas
        against them (the sync service builds a delta only from a base it holds)."""
        source = packaged_artifacts()
        with self.admin() as admin:
            for model in models:
                card = ModelCard.load(source / f"{model}{CARD_SUFFIX}")
                admin.upload(source / card.file, card)
                admin.upload_bank(card, source)

    def push(
        self,
        artifact: Path,
        card: ModelCard,
        **rollout: Any,
    ) -> int:
        """Upload ``artifact`` as ``card``'s version and start a rollout; its id."""
        with self.admin() as admin:
            admin.upload(artifact, card)
            admin.upload_bank(card, artifact.parent)
            started = admin.start_rollout({"model": card.name, "version": card.version, **rollout})
        return int(started["id"])

    def wait_rollout(
        self,
        rollout_id: int,
        timeout: float = 60.0,
        on_view: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the rollout until it reaches a final state; the last view."""
        deadline = time.monotonic() + timeout
        with self.admin() as admin:
            while True:
                view: dict[str, Any] = admin.rollout(rollout_id)
                if on_view is not None:
                    on_view(view)
                if view["state"] in FINAL_ROLLOUT_STATES:
                    return view
                if time.monotonic() > deadline:
                    raise DeadlineExceeded(
                        f"rollout {rollout_id} still {view['state']} after {timeout:.0f} s"
                    )
                time.sleep(0.1)

    def stop(self) -> dict[str, int]:
        codes = {name: process.stop() for name, process in self.agents.items()}
        codes["sync"] = self.sync.stop()
        codes["broker"] = self.broker.stop()
        return codes


def start_fleet(
    workdir: Path,
    devices: Iterable[str],
    broker_kind: BrokerKind = "auto",
    agent_overrides: dict[str, str] | None = None,
    baseline: Iterable[str] = BASELINE_MODELS,
    **sync_settings: str,
) -> FleetStack:
    """Start a broker, the sync service and one agent per device, all enrolled."""
    devices = list(devices)
    pki = ensure_dev_pki(workdir / "pki", devices=devices)
    setup = BrokerSetup.create(
        workdir / "broker", pki, free_port(), devices, [SYNC_USER, OPERATOR_USER]
    )
    broker = start_broker(setup, kind=broker_kind)
    sync = None
    try:
        sync = start_sync(workdir, setup, broker.supports_mqtt5, sync_settings)
        stack = FleetStack(workdir, setup, broker, sync, agent_overrides=agent_overrides or {})
        stack.register_packaged(baseline)
        for device in devices:
            stack.start_agent(device)
        return stack
    except BaseException:
        if sync is not None:
            sync.stop()
        broker.stop()
        raise


def start_sync(
    workdir: Path, setup: BrokerSetup, mqtt5: bool, settings: dict[str, str]
) -> ServiceProcess:
    state = workdir / "sync-state"
    ensure_operator_key(state / "keys")  # the agents pin its public half before it starts
    address = setup.address(SYNC_USER)
    password_file = workdir / "sync.password"
    write_private(password_file, (address.password or "").encode())
    defaults = {
        "state_dir": str(state),
        "broker_host": address.host,
        "broker_port": str(address.port),
        "broker_password_file": str(password_file),
        "broker_ca": str(address.ca),
        "broker_cert": str(address.cert),
        "broker_key": str(address.key),
        "broker_mqtt_version": "5" if mqtt5 else "4",
        "tick_interval_s": "0.2",
        "rollout_soak_s": "0",
        "certs_broker_dir": str(setup.directory),  # renews the agents' certificates
    }
    process = sync_process(workdir, **(defaults | settings))
    process.start()
    return process
