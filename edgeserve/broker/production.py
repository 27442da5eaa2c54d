"""The files a production fleet starts from, made on the operator's machine in one step.

``init_fleet_broker`` makes (or completes) the operator's broker folder — the fleet CA,
whose key never leaves this folder, the broker's server certificate for the names
devices connect to, the password file, the ACL and the sync service's login — and two
sets of files to copy out of it: ``broker-host/`` (what Mosquitto reads from
``/etc/mosquitto/edgeserve`` plus its ``conf.d`` entry) and ``sync-host/`` (the sync
service's certificate, key, password and a ``sync.toml`` naming them). Later the same
folder enrolls devices (``edgeserve fleet enroll --broker-dir``), which changes only
``passwd``: the one file to copy to the broker host again before reloading it. A
revocation (``edgeserve fleet revoke``) changes ``passwd`` and ``crl.pem``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from edgeserve.broker.acl import SERVICE_USER
from edgeserve.broker.config import production_config, render_mosquitto_conf
from edgeserve.broker.enrollment import BrokerSetup
from edgeserve.durable import write_private
from edgeserve.security.pki import ensure_dev_pki

BROKER_ETC = Path("/etc/mosquitto/edgeserve")


@dataclass(frozen=True, slots=True)
class FleetBrokerFiles:
    setup: BrokerSetup
    broker_host: Path
    sync_host: Path


def init_fleet_broker(
    directory: Path,
    hostnames: Sequence[str],
    ips: Sequence[str] = (),
    port: int = 8883,
    broker_etc: Path = BROKER_ETC,
) -> FleetBrokerFiles:
    """Make the operator's broker folder and the files for the broker and sync hosts.

    Running it again keeps the CA, the users and their passwords, and re-issues the
    server certificate only if the names changed.
    """
    directory = directory.absolute()
    pki = ensure_dev_pki(directory / "pki", devices=[], hostnames=hostnames, ips=ips)
    setup = BrokerSetup.create(directory, pki, port, [], [SERVICE_USER], host=hostnames[0])
    broker_host = directory / "broker-host"
    broker_host.mkdir(mode=0o700, exist_ok=True)
    # crl.pem too: the broker's crlfile must exist, and fleet revoke rewrites it.
    for source in (pki.ca.cert, pki.server.cert, setup.crl_file):
        shutil.copyfile(source, broker_host / source.name)
    write_private(broker_host / "server.key", pki.server.key.read_bytes())
    config = replace(production_config(broker_etc), port=port)
    (broker_host / "edgeserve.conf").write_text(render_mosquitto_conf(config))
    return FleetBrokerFiles(setup, broker_host, _sync_host_files(setup, directory / "sync-host"))


SYNC_STATE = Path("/var/lib/edgeserve-sync")


def _sync_host_files(setup: BrokerSetup, folder: Path) -> Path:
    """The sync service's login and a config naming it, paths relative to ``sync.toml``."""
    folder.mkdir(mode=0o700, exist_ok=True)
    pair = setup.client_cert(SERVICE_USER)
    shutil.copyfile(setup.pki.ca.cert, folder / "ca.pem")
    shutil.copyfile(pair.cert, folder / "sync.pem")
    write_private(folder / "sync.key", pair.key.read_bytes())
    password = setup.credentials(SERVICE_USER).password
    write_private(folder / "broker.password", (password + "\n").encode())
    (folder / "sync.toml").write_text(
        "# edgeserve sync service; relative paths are relative to this file's folder.\n"
        f'state_dir = "{SYNC_STATE}"\n'
        f'broker_host = "{setup.host}"\n'
        f"broker_port = {setup.port}\n"
        f'broker_username = "{SERVICE_USER}"\n'
        'broker_password_file = "broker.password"\n'
        'broker_ca = "ca.pem"\n'
        'broker_cert = "sync.pem"\n'
        'broker_key = "sync.key"\n'
    )
    return folder
