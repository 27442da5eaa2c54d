"""The agent's fleet sync: MQTT client, message handlers, telemetry recording and upload.

``SyncClient`` keeps the device connected to the fleet's broker and dispatches desired
state, update chunks and telemetry acknowledgements to the plain functions in
``handlers``; ``TelemetryRecorder`` batches per-request records into the outbox off the
request path; ``TelemetryUploader`` sends the outbox home one acknowledged batch at a
time. None of it is needed to serve: an agent without a broker, or with the broker down,
answers every request the same.
"""

from edgeserve.edge_agent.sync.client import SyncClient, broker_address
from edgeserve.edge_agent.sync.handlers import SyncContext, SyncState
from edgeserve.edge_agent.sync.recorder import TelemetryRecorder
from edgeserve.edge_agent.sync.telemetry import TelemetryUploader

__all__ = [
    "SyncClient",
    "SyncContext",
    "SyncState",
    "TelemetryRecorder",
    "TelemetryUploader",
    "broker_address",
]
