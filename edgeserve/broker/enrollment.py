"""Everything a broker needs, generated under one state folder: users, certificates, config.

``BrokerSetup.create`` makes (or completes) a folder holding the Mosquitto config, the
ACL file, the password file, one client certificate per user, and — for the demo and
the tests only — each user's plaintext password in a 0600 file under ``credentials/``.
In production a device enrolls with ``enroll``: it sends a certificate signing request
(its private key never leaves it), gets back a certificate signed by the CA and a fresh
password, and nothing but the password's hash stays on the broker host. Device ids are
checked with the topic tree's own rule (one topic level, no wildcards) before they reach
a certificate, a file name or an ACL pattern, and names starting ``edgeserve-`` are kept
for the project's own users: the sync service and ``PROBE_USER``, the login a broker
started from this setup is checked with (the broker takes a client's id from its
username, so probing as the sync service would push the live sync service off). Adding a
device reloads any broker started from this setup.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pwd
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509

from edgeserve.broker import passwords
from edgeserve.broker.acl import SERVICE_USER, render_acl
from edgeserve.broker.config import MosquittoConfig, render_mosquitto_conf
from edgeserve.durable import write_atomic, write_private
from edgeserve.mqtt import BrokerAddress
from edgeserve.security.pki import (
    LEAF_VALIDITY,
    CertPaths,
    DevPki,
    issue_client_cert,
    sign_device_csr,
)
from edgeserve.security.revocation import crl_entries, write_crl
from edgeserve.wire.errors import InvalidInput, ModelNotFound
from edgeserve.wire.topics import check_device_id

PROBE_USER = "edgeserve-probe"
RESERVED_PREFIX = "edgeserve-"


@dataclass(frozen=True, slots=True)
class BrokerCredentials:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class DeviceEnrollment:
    """What the operator hands an enrolling device: its certificate, the CA that signed
    it (and the broker's certificate) and its broker login."""

    device_id: str
    certificate_pem: bytes
    ca_pem: bytes
    credentials: BrokerCredentials


class Reloadable(Protocol):
    def reload(self, timeout: float = 10.0) -> None: ...


class BrokerSetup:
    """The files of one broker under ``directory``; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        pki: DevPki,
        port: int,
        service_users: Sequence[str] = (SERVICE_USER,),
        host: str = "127.0.0.1",
    ) -> None:
        self.directory = directory.resolve()
        self.pki = pki
        self.port = port
        self.host = host
        self.service_users = tuple(service_users)
        self._brokers: list[Reloadable] = []

    # -- layout ------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def password_file(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.directory / "acl"

    @property
    def persistence_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "broker.log"

    @property
    def credentials_dir(self) -> Path:
        return self.directory / "credentials"

    @property
    def crl_file(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def pid_file(self) -> Path:
        return self.directory / "mosquitto.pid"

    @property
    def enrolled_dir(self) -> Path:
        """The certificates issued by ``enroll`` (public: kept for the operator's records)."""
        return self.directory / "enrolled"

    # -- creating and reopening --------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        pki: DevPki,
        port: int,
        devices: Iterable[str],
        service_users: Sequence[str] = (SERVICE_USER,),
        host: str = "127.0.0.1",
    ) -> BrokerSetup:
        """Write config, ACL and users; users that already have credentials keep them."""
        setup = cls(directory, pki, port, service_users, host)
        for directory_ in (setup.directory, setup.credentials_dir, setup.persistence_dir):
            directory_.mkdir(parents=True, exist_ok=True, mode=0o700)
        setup._write_config()
        if not setup.crl_file.exists():
            write_crl(setup.pki.ca, [], setup.crl_file)  # the broker will not start without
        entries = passwords.read_password_file(setup.password_file)
        for user in [PROBE_USER, *setup.service_users, *devices]:
            setup._check_username(user)
            if not setup._has_credentials(user, entries):
                entries[user] = setup._new_password(user)
            setup.client_cert(user)
        passwords.write_password_file(setup.password_file, entries)
        setup._save_manifest()
        return setup

    @classmethod
    def load(cls, directory: Path) -> BrokerSetup:
        """Reopen a setup made by ``create`` (for enrollment while a broker runs)."""
        try:
            saved = json.loads((directory / "setup.json").read_text())
        except FileNotFoundError as exc:
            raise ModelNotFound(f"no broker setup in {directory}") from exc
        pki = DevPki(
            ca=CertPaths(Path(saved["ca"][0]), Path(saved["ca"][1])),
            server=CertPaths(Path(saved["server"][0]), Path(saved["server"][1])),
            devices={},
        )
        return cls(directory, pki, int(saved["port"]), saved["service_users"], saved["host"])

    # -- users -------------------------------------------------------------------------

    def add_device(self, device_id: str) -> BrokerCredentials:
        """Enroll ``device_id`` (or give it a new password); running brokers reload."""
        self._check_device(device_id)
        password_hash = self._new_password(device_id)
        self.client_cert(device_id)
        self._store_password_hash(device_id, password_hash)
        return self.credentials(device_id)

    def enroll(self, device_id: str, csr_pem: bytes) -> DeviceEnrollment:
        """Sign ``device_id``'s certificate request and give it a fresh broker password.

        The request must carry the device id as its CN and verify with its own key
        (``CsrInvalid``, ``IdentityMismatch`` otherwise). Unlike ``add_device`` no
        plaintext password stays here: it travels in the returned enrollment only. The
        ACL needs no change (its patterns are per user); running brokers reload.
        """
        self._check_device(device_id)
        certificate = sign_device_csr(self.pki.ca, csr_pem, device_id)
        password = passwords.generate_password()
        # A plaintext kept by an earlier add_device would now be a stale password.
        self._credential_path(device_id).unlink(missing_ok=True)
        self.enrolled_dir.mkdir(mode=0o700, exist_ok=True)
        write_atomic(self.enrolled_dir / f"{device_id}.pem", certificate)
        self._store_password_hash(device_id, passwords.hash_password(password))
        credentials = BrokerCredentials(device_id, password)
        return DeviceEnrollment(device_id, certificate, self.pki.ca.cert.read_bytes(), credentials)

    def renew(
        self, device_id: str, csr_pem: bytes, validity: dt.timedelta = LEAF_VALIDITY
    ) -> bytes:
        """A new certificate (PEM) for an enrolled device's request; its password stays."""
        self._check_device(device_id)
        if device_id not in passwords.read_password_file(self.password_file):
            raise ModelNotFound(f"device {device_id!r} is not enrolled with this broker")
        certificate = sign_device_csr(self.pki.ca, csr_pem, device_id, validity)
        self.enrolled_dir.mkdir(mode=0o700, exist_ok=True)
        write_atomic(self.enrolled_dir / f"{device_id}.pem", certificate)
        return certificate

    def revoke(self, device_id: str, serials: Iterable[int]) -> None:
        """Revoke ``serials`` (the device's certificates) and remove its password; the
        broker reloads, which disconnects the device and refuses its certificates."""
        self._check_device(device_id)
        now = dt.datetime.now(dt.UTC)
        entries = crl_entries(self.crl_file) + [(serial, now) for serial in serials]
        write_crl(self.pki.ca, entries, self.crl_file)
        self._credential_path(device_id).unlink(missing_ok=True)
        users = passwords.read_password_file(self.password_file)
        users.pop(device_id, None)
        passwords.write_password_file(self.password_file, users)
        self.reload_brokers()

    def certificate_serials(self, device_id: str) -> list[int]:
        """Serials of the certificates this folder holds for ``device_id`` (enrolled or
        issued by ``add_device``)."""
        self._check_username(device_id)
        found = []
        for path in (self.enrolled_dir / f"{device_id}.pem", self._certs_dir / f"{device_id}.pem"):
            with contextlib.suppress(FileNotFoundError, ValueError):
                found.append(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)
        return found

    def revoked_serials(self) -> set[int]:
        return {serial for serial, _ in crl_entries(self.crl_file)}

    def reload_brokers(self) -> None:
        """Reload the brokers attached here, or else the one whose pid file is here."""
        for broker in self._brokers:
            broker.reload()
        if self._brokers:
            return
        try:
            pid = int(self.pid_file.read_text().strip())
            # A broker killed with SIGKILL leaves its pid file; the pid may be reused.
            running = Path(f"/proc/{pid}/comm").read_text().strip() == "mosquitto"
        except (OSError, ValueError):
            return  # no broker runs from this folder: it reads the files when it starts
        if running:
            os.kill(pid, signal.SIGHUP)

    def users(self) -> list[str]:
        return sorted(passwords.read_password_file(self.password_file))

    def credentials(self, username: str) -> BrokerCredentials:
        """The plaintext credentials kept for the demo and tests (``ModelNotFound`` if none)."""
        try:
            password = self._credential_path(username).read_text().strip()
        except FileNotFoundError as exc:
            raise ModelNotFound(f"no broker credentials for {username!r}") from exc
        return BrokerCredentials(username, password)

    def client_cert(self, username: str) -> CertPaths:
        """The user's TLS client certificate, issued by the dev CA on first use."""
        self._check_username(username)
        if username in self.pki.devices:
            return self.pki.device(username)
        pair = CertPaths(self._certs_dir / f"{username}.pem", self._certs_dir / f"{username}.key")
        if not (pair.cert.exists() and pair.key.exists()):
            issue_client_cert(self.pki.ca, self._certs_dir, username)
        return pair

    def address(self, username: str) -> BrokerAddress:
        """How ``username`` reaches this broker: TLS with its certificate, and its password."""
        pair = self.client_cert(username)
        password = self.credentials(username).password
        return BrokerAddress(
            self.host, self.port, username, password, self.pki.ca.cert, pair.cert, pair.key
        )

    def attach(self, broker: Reloadable) -> None:
        """Reload ``broker`` whenever users change."""
        self._brokers.append(broker)

    def detach(self, broker: Reloadable) -> None:
        if broker in self._brokers:
            self._brokers.remove(broker)

    # -- internals ---------------------------------------------------------------------

    @property
    def _certs_dir(self) -> Path:
        # Beside the dev PKI's own device certificates, so ensure_dev_pki finds them too.
        return self.pki.ca.cert.parent / "devices"

    def mosquitto_config(self) -> MosquittoConfig:
        return MosquittoConfig(
            port=self.port,
            ca=self.pki.ca.cert.resolve(),
            cert=self.pki.server.cert.resolve(),
            key=self.pki.server.key.resolve(),
            password_file=self.password_file,
            acl_file=self.acl_file,
            persistence_dir=self.persistence_dir,
            log_file=self.log_file,
            crl_file=self.crl_file,
            pid_file=self.pid_file,
            bind=self.host,
            run_as=pwd.getpwuid(os.geteuid()).pw_name,
        )

    def _write_config(self) -> None:
        self.acl_file.write_text(render_acl(self.service_users))
        write_private(self.config_path, render_mosquitto_conf(self.mosquitto_config()).encode())

    def _save_manifest(self) -> None:
        saved = {
            "host": self.host,
            "port": self.port,
            "service_users": list(self.service_users),
            "ca": [str(p.resolve()) for p in self.pki.ca],
            "server": [str(p.resolve()) for p in self.pki.server],
        }
        (self.directory / "setup.json").write_text(json.dumps(saved, indent=2) + "\n")

    def _check_device(self, device_id: str) -> None:
        self._check_username(device_id)
        if device_id in self.service_users:
            raise InvalidInput(f"{device_id!r} is a service user, not a device")
        if device_id.startswith(RESERVED_PREFIX):
            raise InvalidInput(f"device ids starting {RESERVED_PREFIX!r} are reserved for services")

    def _store_password_hash(self, username: str, password_hash: str) -> None:
        """Write ``username``'s hash into the password file; running brokers reload."""
        entries = passwords.read_password_file(self.password_file)
        entries[username] = password_hash
        passwords.write_password_file(self.password_file, entries)
        self.reload_brokers()

    def _new_password(self, username: str) -> str:
        """A fresh password: its plaintext to the 0600 credentials file, its hash returned."""
        password = passwords.generate_password()
        write_private(self._credential_path(username), (password + "\n").encode())
        return passwords.hash_password(password)

    def _has_credentials(self, username: str, entries: dict[str, str]) -> bool:
        try:
            password = self.credentials(username).password
        except ModelNotFound:
            return False
        return username in entries and passwords.verify_password(password, entries[username])

    def _credential_path(self, username: str) -> Path:
        self._check_username(username)
        return self.credentials_dir / f"{username}.password"

    @staticmethod
    def _check_username(username: str) -> None:
        # Usernames become file names and %u in ACL patterns: one safe topic level only.
        try:
            check_device_id(username)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
