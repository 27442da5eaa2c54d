"""Certificates that live seconds, on the real system: Mosquitto, the sync service, an
agent process and the gateway. A device renews before expiry and keeps its broker login
across the expiry of its old certificate; a renewal waiting for an operator survives a
broker crash; a revoked device is cut off from the broker and the gateway at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud_gateway.tenancy import TenantStore
from edge_agent.escalation.grpc_transport import GrpcCloudTransport
from edge_agent.escalation.transport import TlsFiles
from edgeserve.broker import BrokerFailed, BrokerSetup, MosquittoProcess, find_mosquitto, probe
from edgeserve.client import OipHttpClient
from edgeserve.durable import write_atomic
from edgeserve.eval.fleet import start_sync
from edgeserve.mqtt import BrokerAddress
from edgeserve.polling import wait_until
from edgeserve.processes import ServiceProcess, agent_process, free_port
from edgeserve.security.pki import CertPaths, ensure_dev_pki, issue_client_cert, sign_device_csr
from edgeserve.security.revocation import CertFacts, cert_facts, load_certificate, write_crl
from edgeserve.security.signing import PUBLIC_NAME
from edgeserve.wire import oip_grpc
from edgeserve.wire.errors import Unauthenticated
from edgeserve.wire.proto import grpc_service_pb2_grpc as pb_grpc
from edgeserve.wire.tensors import InferRequest, InferTensor
from sync.admin_client import AdminClient
from tests.conftest import StartGateway
from tests.sync.conftest import SYNC_USER

pytestmark = pytest.mark.integration
DEVICE = "cert-0"


@dataclass
class Fleet:
    setup: BrokerSetup
    broker: MosquittoProcess
    sync: ServiceProcess
    sync_state: Path
    device_dir: Path

    @property
    def device_cert(self) -> Path:
        return self.device_dir / f"{DEVICE}.pem"

    @property
    def device_key(self) -> Path:
        return self.device_dir / f"{DEVICE}.key"

    def admin(self) -> AdminClient:
        token = (self.sync_state / "admin.token").read_text().strip()
        return AdminClient(f"http://127.0.0.1:{self.sync.ports['admin']}", token)

    def device_facts(self) -> CertFacts:
        return cert_facts(load_certificate(self.device_cert.read_bytes()))

    def device_address(self, cert: Path) -> BrokerAddress:
        password = self.setup.credentials(DEVICE).password
        return BrokerAddress(
            "127.0.0.1", self.setup.port, DEVICE, password, self.setup.pki.ca.cert, cert,
            self.device_key,
        )  # fmt: skip


StartFleet = Callable[..., Fleet]


@pytest.fixture
def start_fleet(tmp_path: Path) -> Iterator[StartFleet]:
    """A fresh fleet CA, broker and sync service; the device's certificate lives
    ``device_validity_s``; renewed ones live an hour."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    running: list[ServiceProcess | MosquittoProcess] = []

    def start(device_validity_s: float, approval: str = "auto") -> Fleet:
        pki = ensure_dev_pki(tmp_path / "pki", devices=[])
        setup = BrokerSetup.create(tmp_path / "broker", pki, free_port(), [DEVICE], [SYNC_USER])
        device_dir = tmp_path / "device"
        validity = dt.timedelta(seconds=device_validity_s)
        issue_client_cert(pki.ca, device_dir, DEVICE, validity)
        broker = MosquittoProcess(setup)
        running.append(broker)
        broker.start()
        sync_state = tmp_path / "sync-state"  # where start_sync keeps it
        settings = {
            "certs_broker_dir": str(setup.directory),
            "cert_approval": approval,
            "cert_validity_s": "3600",
            "log_format": "text",
        }
        sync = start_sync(tmp_path, setup, True, settings)
        running.append(sync)
        return Fleet(setup, broker, sync, sync_state, device_dir)

    yield start
    for process in reversed(running):
        process.stop()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[[Fleet], ServiceProcess]]:
    agents: list[ServiceProcess] = []

    def start(fleet: Fleet) -> ServiceProcess:
        agent = agent_process(
            tmp_path,
            device_id=DEVICE,
            sync_broker=f"127.0.0.1:{fleet.setup.port}",
            sync_password=fleet.setup.credentials(DEVICE).password,
            sync_ca=str(fleet.setup.pki.ca.cert),
            sync_cert=str(fleet.device_cert),
            sync_key=str(fleet.device_key),
            operator_public_key=str(fleet.sync_state / "keys" / PUBLIC_NAME),
            cache_entries="0",
        )
        agents.append(agent)
        agent.start()
        return agent

    yield start
    for agent in agents:
        agent.stop()


def connected(agent: ServiceProcess) -> bool:
    with OipHttpClient(f"http://127.0.0.1:{agent.port}") as client:
        return client.metric("edgeserve_agent_sync_broker_connected") == 1


def renewed(fleet: Fleet, old: CertFacts) -> Callable[[], bool]:
    return lambda: fleet.device_facts().serial != old.serial


def handshake_refused(address: BrokerAddress) -> bool:
    """The broker refuses the certificate itself, before any password is looked at."""
    try:
        probe(address, timeout=5)
    except (ssl.SSLError, ConnectionError):
        return True
    except BrokerFailed:
        return False
    return False


def test_a_device_renews_before_expiry_and_reconnects_after_its_old_certificate_expired(
    start_fleet: StartFleet, start_agent: Callable[[Fleet], ServiceProcess], tmp_path: Path
) -> None:
    fleet = start_fleet(device_validity_s=15)
    old = fleet.device_facts()
    old_copy = shutil.copy(fleet.device_cert, tmp_path / "old.pem")
    agent = start_agent(fleet)

    wait_until(renewed(fleet, old), timeout=20, what="the agent's certificate renewed")
    new = fleet.device_facts()
    assert new.not_after - old.not_after > dt.timedelta(minutes=50)
    with fleet.admin() as admin:
        wait_until(
            lambda: admin.devices()[0]["cert_not_after"] == new.not_after.timestamp(),
            timeout=10,
            what="the fleet listing the renewed certificate's expiry",
        )

    wait_until(lambda: time.time() > old.not_after.timestamp() + 1, timeout=20)
    assert connected(agent)  # the open connection outlived the certificate it was made with
    assert handshake_refused(fleet.device_address(Path(old_copy)))  # the old one no longer logs in
    fleet.broker.stop()
    wait_until(lambda: not connected(agent), timeout=10)
    fleet.broker.start()
    wait_until(lambda: connected(agent), timeout=20, what="the agent back on the renewed cert")


def test_a_renewal_waiting_for_approval_survives_a_broker_crash(
    start_fleet: StartFleet, start_agent: Callable[[Fleet], ServiceProcess]
) -> None:
    fleet = start_fleet(device_validity_s=45, approval="operator")
    old = fleet.device_facts()
    start_agent(fleet)
    with fleet.admin() as admin:
        wait_until(
            lambda: any(row["pending_since"] for row in admin.certs()),
            timeout=30,
            what="the device's renewal pending approval",
        )
        fleet.broker.kill()
        admin.approve_cert(DEVICE)  # signed while the device cannot be told
        assert fleet.device_facts().serial == old.serial
        fleet.broker.start()
        wait_until(renewed(fleet, old), timeout=20, what="the approved certificate delivered")
        assert not any(row["pending_since"] for row in admin.certs())


def test_a_revoked_device_is_cut_off_from_the_broker_and_the_gateway(
    start_fleet: StartFleet,
    start_agent: Callable[[Fleet], ServiceProcess],
    start_gateway: StartGateway,
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    fleet = start_fleet(device_validity_s=3600)
    pki = fleet.setup.pki
    gateway = start_gateway(
        tenants={"fleet": {"kind": "device", "allowed_models": ["digits-cloud"]}},
        tls_cert=str(pki.server.cert),
        tls_key=str(pki.server.key),
        client_ca=str(pki.ca.cert),
        client_crl=str(fleet.setup.crl_file),
    )
    store = TenantStore(gateway.state_dir / "tenants.db")
    store.register_device(DEVICE, "fleet")
    store.close()
    agent = start_agent(fleet)
    wait_until(lambda: connected(agent), timeout=20, what="the agent connected")
    address = fleet.device_address(fleet.device_cert)
    credentials = grpc.ssl_channel_credentials(
        pki.ca.cert.read_bytes(), fleet.device_key.read_bytes(), fleet.device_cert.read_bytes()
    )
    port = gateway.process.ports["grpc_mtls"]
    tensor = InferTensor.from_numpy("input", digits[0][:1])
    request = oip_grpc.request_to_proto(InferRequest("digits-cloud", [tensor]))
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request, timeout=10)  # the device is served before

        with fleet.admin() as admin:
            admin.revoke(DEVICE, "stolen")
            row = admin.devices()[0]
        assert row["cert_revoked"] is True
        wait_until(lambda: not connected(agent), timeout=10, what="the broker dropping the agent")
        assert handshake_refused(address)
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(request, timeout=10)  # the same open connection, next call
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def fleet_cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    """``edgeserve fleet ARGS`` as an operator runs it, its output a pipe."""
    url = f"http://127.0.0.1:{fleet.sync.ports['admin']}"
    token = str(fleet.sync_state / "admin.token")
    command = [sys.executable, "-m", "edgeserve", "fleet", "--url", url, "--token-file", token]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_fleet_cli_shows_days_to_expiry_and_revokes_a_device(
    start_fleet: StartFleet, start_agent: Callable[[Fleet], ServiceProcess]
) -> None:
    fleet = start_fleet(device_validity_s=10 * 86400)
    start_agent(fleet)
    with fleet.admin() as admin:
        wait_until(lambda: admin.devices() and admin.devices()[0]["cert_not_after"], timeout=20)
    listing = fleet_cli(fleet, "devices")
    assert listing.returncode == 0, listing.stderr
    (row,) = [line for line in listing.stdout.splitlines() if DEVICE in line]
    assert "10 days" in row and "cert expires" in listing.stdout

    revoked = fleet_cli(fleet, "revoke", DEVICE, "--yes", "--reason", "stolen")
    assert revoked.returncode == 0, revoked.stderr
    certs = json.loads(fleet_cli(fleet, "certs", "--json").stdout)
    assert [c["device_id"] for c in certs if c["revoked_at"]] == [DEVICE]
    (row,) = [line for line in fleet_cli(fleet, "devices").stdout.splitlines() if DEVICE in line]
    assert "revoked" in row


def test_the_agents_gateway_channel_presents_a_renewed_certificate(
    tmp_path: Path, start_gateway: StartGateway, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    pki = ensure_dev_pki(tmp_path / "pki", devices=[])
    pair = issue_client_cert(pki.ca, tmp_path / "device", DEVICE, dt.timedelta(hours=1))
    crl = tmp_path / "crl.pem"
    write_crl(pki.ca, [], crl)
    gateway = start_gateway(
        tenants={"fleet": {"kind": "device", "allowed_models": ["digits-cloud"]}},
        tls_cert=str(pki.server.cert),
        tls_key=str(pki.server.key),
        client_ca=str(pki.ca.cert),
        client_crl=str(crl),
    )
    store = TenantStore(gateway.state_dir / "tenants.db")
    store.register_device(DEVICE, "fleet")
    store.close()
    target = f"localhost:{gateway.process.ports['grpc_mtls']}"
    transport = GrpcCloudTransport(target, TlsFiles(pki.ca.cert, pair.cert, pair.key), None)
    request = InferRequest("digits-cloud", [InferTensor.from_numpy("input", digits[0][:1])])
    renewal = fleet_renewal_of(pair.key, pki.ca)  # what the sync service would sign

    async def run() -> None:
        await transport.infer(request, 10)
        old = load_certificate(pair.cert.read_bytes()).serial_number
        write_crl(pki.ca, [(old, dt.datetime.now(dt.UTC))], crl)  # only the old one is dead
        with pytest.raises(Unauthenticated):
            await transport.infer(request, 10)
        write_atomic(pair.cert, renewal, 0o644)  # as the agent's renewal writes it
        await transport.infer(request, 10)
        await transport.close()

    asyncio.run(run())


def fleet_renewal_of(key_path: Path, ca: CertPaths) -> bytes:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return sign_device_csr(ca, csr.public_bytes(serialization.Encoding.PEM), DEVICE)
