"""A pure-Python broker for machines without Mosquitto, and the choice between the two.

``start_broker`` runs the real Mosquitto when its binary exists and otherwise falls
back, loudly, to ``EmbeddedBroker``: amqtt in a child process
(``edgeserve.broker.amqtt_server``) with the same setup folder, TLS certificates,
password file and ACL rules, and the same start/stop/kill/reload interface. The
fallback exists so the demo runs anywhere; the tests and production use Mosquitto.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

from edgeserve.broker.enrollment import PROBE_USER, BrokerSetup
from edgeserve.broker.mosquitto import MosquittoProcess, find_mosquitto
from edgeserve.broker.process import BrokerProcess

log = logging.getLogger(__name__)
BrokerKind = Literal["auto", "mosquitto", "embedded"]


class EmbeddedBroker(BrokerProcess):
    """amqtt 0.11 in a child process, enforcing what it can of Mosquitto's setup.

    Enforced as with Mosquitto: TLS 1.2+ with a client certificate from our CA, a
    username and password checked against the same ``$7$`` password file (re-read on
    ``reload()``), the per-device ACL on every publish and subscribe, and the write ACL
    on a client's last will (a refused will refuses the login).

    Not enforced, or different: MQTT 3.1.1 only (amqtt refuses MQTT 5 clients); a
    refused login is a closed connection, not a CONNACK with a reason code; a refused
    publish is dropped silently; no persistence (retained messages and sessions are lost
    on restart); no packet size limit, no queue limits, no persistent session expiry.
    """

    kind = "embedded amqtt broker"
    supports_mqtt5 = False

    def __init__(self, setup: BrokerSetup) -> None:
        super().__init__(
            [sys.executable, "-m", "edgeserve.broker.amqtt_server", str(setup.directory)],
            probe_as=setup.address(PROBE_USER),
            log_file=setup.log_file,
        )
        self.setup = setup


def start_broker(
    setup: BrokerSetup, timeout: float = 20.0, kind: BrokerKind = "auto"
) -> MosquittoProcess | EmbeddedBroker:
    """Start Mosquitto or, when it is not installed (or ``kind="embedded"``), the fallback.

    The broker is attached to ``setup``, so ``setup.add_device`` reloads it.
    """
    broker: MosquittoProcess | EmbeddedBroker
    if kind == "mosquitto" or (kind == "auto" and find_mosquitto() is not None):
        broker = MosquittoProcess(setup)
    else:
        reason = "as asked" if kind == "embedded" else "mosquitto is not installed"
        log.warning(
            "using the embedded amqtt broker as a fallback (%s): MQTT 3.1.1 only, no "
            "persistence, no packet size limit; install mosquitto for real use",
            reason,
        )
        broker = EmbeddedBroker(setup)
    broker.start(timeout)
    setup.attach(broker)
    return broker
