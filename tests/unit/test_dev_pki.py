"""The dev PKI, for real: a TLS server on a loopback port admits only our CA's devices."""

import queue
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeserve.security import (
    DevPki,
    client_ssl_context,
    create_dev_ca,
    ensure_dev_pki,
    issue_client_cert,
    peer_common_name,
    server_ssl_context,
)


class TlsServer:
    """Accepts one connection at a time, replies with the client's CN, records outcomes."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self.outcomes: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            raw.settimeout(5)
            try:
                with self._context.wrap_socket(raw, server_side=True) as tls:
                    name = peer_common_name(tls.getpeercert())
                    tls.sendall(f"hello {name}".encode())
                    self.outcomes.put(("accepted", name))
            except (ssl.SSLError, OSError) as exc:
                raw.close()
                self.outcomes.put(("refused", type(exc).__name__))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return ensure_dev_pki(tmp_path / "pki", ["dev-1", "dev-2"])


@pytest.fixture
def server(pki: DevPki) -> Iterator[TlsServer]:
    running = TlsServer(server_ssl_context(pki))
    yield running
    running.close()


def _talk(port: int, context: ssl.SSLContext) -> str:
    """The server's reply, or a description of how the connection failed."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            return tls.recv(100).decode() or "closed"
    except (ssl.SSLError, OSError) as exc:
        return f"failed: {exc}"


def test_a_device_with_its_certificate_connects_and_the_server_sees_its_cn(pki, server):
    for device in ("dev-1", "dev-2"):
        assert _talk(server.port, client_ssl_context(pki, device)) == f"hello {device}"
        assert server.outcomes.get(timeout=5) == ("accepted", device)


def test_a_client_without_a_certificate_is_refused(pki, server):
    reply = _talk(server.port, client_ssl_context(pki))

    assert not reply.startswith("hello")
    assert server.outcomes.get(timeout=5)[0] == "refused"


def test_a_client_certificate_from_another_ca_is_refused(pki, server, tmp_path):
    rogue_ca = create_dev_ca(tmp_path / "rogue", "rogue CA")
    rogue = issue_client_cert(rogue_ca, tmp_path / "rogue", "dev-1")  # same CN, wrong issuer
    context = client_ssl_context(pki)
    context.load_cert_chain(rogue.cert, rogue.key)

    reply = _talk(server.port, context)

    assert not reply.startswith("hello")
    assert server.outcomes.get(timeout=5)[0] == "refused"


def test_a_client_refuses_a_server_of_another_ca(pki, tmp_path):
    rogue = ensure_dev_pki(tmp_path / "rogue", ["dev-1"])
    impostor = TlsServer(server_ssl_context(rogue))
    try:
        reply = _talk(impostor.port, client_ssl_context(pki, "dev-1"))
    finally:
        impostor.close()

    assert "CERTIFICATE_VERIFY_FAILED" in reply


def test_grpc_mutual_tls_accepts_our_devices_and_reports_their_cn(pki):
    grpc = pytest.importorskip("grpc")

    def who_am_i(request: bytes, context) -> bytes:
        return context.auth_context()["x509_common_name"][0]

    handler = grpc.method_handlers_generic_handler(
        "test.Identity", {"WhoAmI": grpc.unary_unary_rpc_method_handler(who_am_i)}
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(pki.server.key.read_bytes(), pki.server.cert.read_bytes())],
        root_certificates=pki.ca.cert.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    ca = pki.ca.cert.read_bytes()
    device = pki.device("dev-1")
    try:
        with grpc.secure_channel(
            f"127.0.0.1:{port}",
            grpc.ssl_channel_credentials(ca, device.key.read_bytes(), device.cert.read_bytes()),
        ) as channel:
            assert channel.unary_unary("/test.Identity/WhoAmI")(b"", timeout=10) == b"dev-1"
        with (
            grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca)) as anonymous,
            pytest.raises(grpc.RpcError) as refused,
        ):
            anonymous.unary_unary("/test.Identity/WhoAmI")(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_private_keys_are_written_owner_only(pki):
    keys = [pki.ca.key, pki.server.key, *(pair.key for pair in pki.devices.values())]

    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert b"PRIVATE KEY" not in pki.ca.cert.read_bytes()


def test_the_certificates_say_what_they_are_for(pki):
    ca = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    server = x509.load_pem_x509_certificate(pki.server.cert.read_bytes())
    device = x509.load_pem_x509_certificate(pki.device("dev-1").cert.read_bytes())

    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 5 * 365
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    eku = x509.ExtendedKeyUsage
    assert list(server.extensions.get_extension_for_class(eku).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert list(device.extensions.get_extension_for_class(eku).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert device.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    for leaf in (server, device):
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_ensure_creates_only_what_is_missing(pki, tmp_path):
    folder = tmp_path / "pki"
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    pki.device("dev-2").cert.unlink()

    again = ensure_dev_pki(folder, ["dev-1", "dev-2", "dev-3"])

    after = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    changed = {p.relative_to(folder).as_posix() for p in after if before.get(p) != after[p]}
    assert changed == {
        "devices/dev-2.pem",
        "devices/dev-2.key",
        "devices/dev-3.pem",
        "devices/dev-3.key",
    }
    assert again.ca == pki.ca


def test_a_replaced_ca_gets_every_leaf_reissued(pki, tmp_path):
    folder = tmp_path / "pki"
    pki.ca.key.unlink()

    renewed = ensure_dev_pki(folder, ["dev-1"])

    ca = x509.load_pem_x509_certificate(renewed.ca.cert.read_bytes())
    for pair in (renewed.server, renewed.device("dev-1")):
        x509.load_pem_x509_certificate(pair.cert.read_bytes()).verify_directly_issued_by(ca)


def test_changed_server_names_get_the_server_certificate_reissued(pki, tmp_path):
    before = pki.server.cert.read_bytes()

    renewed = ensure_dev_pki(tmp_path / "pki", ["dev-1"], hostnames=["gateway.local"])

    server = x509.load_pem_x509_certificate(renewed.server.cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert renewed.server.cert.read_bytes() != before
    assert sans.get_values_for_type(x509.DNSName) == ["gateway.local"]


def test_a_device_name_cannot_escape_the_folder(tmp_path):
    with pytest.raises(ValueError, match="not a safe certificate name"):
        ensure_dev_pki(tmp_path / "pki", ["../../etc/evil"])
