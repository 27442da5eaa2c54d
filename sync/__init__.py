"""The fleet side of the MQTT sync wire: one service that keeps every device's models current.

It stores model artifacts content-addressed, registers versions with golden self-test
vectors, turns rollout decisions into signed per-device manifests (full or delta against
what each device reports running), serves the update's chunks on request, ingests and
acknowledges telemetry, and exposes an admin HTTP API that the ``edgeserve fleet`` CLI
drives. Submodules are imported where used, so importing this package stays cheap.
"""
