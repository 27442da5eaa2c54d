"""The MQTT broker the fleet talks through: its users, certificates, ACL and process.

``BrokerSetup`` generates everything a broker needs under one state folder — the
Mosquitto config with a mutual-TLS listener, the per-device ACL (a device reaches only
``edgeserve/v1/devices/<its id>/``), the password file in Mosquitto's own ``$7$`` format
(hashed here in pure Python, no ``mosquitto_passwd`` needed) and a client certificate
per user — and enrolls devices later. ``start_broker`` runs the real Mosquitto
(``MosquittoProcess``) or, where it is not installed, the embedded amqtt fallback
(``EmbeddedBroker``); both are child processes that tests can stop, SIGKILL and restart
on the same port. ``deploy/mosquitto/`` holds the production counterpart.
"""

from edgeserve.broker.acl import SERVICE_USER, may_publish, may_subscribe, render_acl
from edgeserve.broker.config import MosquittoConfig, render_mosquitto_conf
from edgeserve.broker.embedded import EmbeddedBroker, start_broker
from edgeserve.broker.enrollment import PROBE_USER, BrokerCredentials, BrokerSetup
from edgeserve.broker.mosquitto import MosquittoProcess, find_mosquitto
from edgeserve.broker.passwords import hash_password, verify_password
from edgeserve.broker.process import BrokerFailed, BrokerProcess, probe

__all__ = [
    "PROBE_USER",
    "SERVICE_USER",
    "BrokerCredentials",
    "BrokerFailed",
    "BrokerProcess",
    "BrokerSetup",
    "EmbeddedBroker",
    "MosquittoConfig",
    "MosquittoProcess",
    "find_mosquitto",
    "hash_password",
    "may_publish",
    "may_subscribe",
    "probe",
    "render_acl",
    "render_mosquitto_conf",
    "start_broker",
    "verify_password",
]
