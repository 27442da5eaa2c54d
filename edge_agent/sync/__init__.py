"""The agent's fleet sync: MQTT client, message handlers, telemetry recording and upload.

``SyncClient`` keeps the device connected to the fleet's broker and dispatches desired
state, update chunks and telemetry acknowledgements to the plain functions in
``handlers``; ``TelemetryUploader`` sends the outbox home one acknowledged batch at a
time. None of it is needed to serve: an agent without a broker, or with the broker down,
answers every request the same — and an agent without a broker never imports this
package's modules (paho, the manifest checks), so nothing is exported here.
"""
