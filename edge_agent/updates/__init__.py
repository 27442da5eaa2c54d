"""Model updates on the device: signed manifests in, a verified and self-tested model out.

Transport-free: the agent's sync client feeds ``Updater`` what arrives over MQTT and
publishes what it returns. See ``updater`` for the flow and its crash-safety argument.
"""

from edge_agent.updates.session import UpdateSession, UpdateStats
from edge_agent.updates.trust import TrustedManifest
from edge_agent.updates.updater import Updater

__all__ = ["TrustedManifest", "UpdateSession", "UpdateStats", "Updater"]
