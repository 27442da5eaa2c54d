"""The registry's tables (columns, keys, defaults, indexes) and how a stored row becomes
the frozen view the rest of the sync service sees; JSON columns are parsed here.
"""

from __future__ import annotations

import json
from typing import Any

from edgeserve.wire.model_card import ModelCard
from edgeserve.wire.sync_messages import RunningModel
from sync.views import DeviceRow, RolloutRow, VersionRow

TABLES: dict[str, tuple[dict[str, Any], tuple[str, ...], dict[str, Any]]] = {
    # name: (columns, primary key, defaults)
    "versions": (
        {
            "model": str,
            "version": str,
            "sha256": str,
            "size": int,
            "format": str,
            "card": str,
            "created": float,
        },
        ("model", "version"),
        {},
    ),
    "devices": (
        {
            "device_id": str,
            "device_group": str,
            "labels": str,
            "agent_version": str,
            "online": int,
            "last_seen": float,
            "running": str,
            "desired_revision": int,
        },
        ("device_id",),
        {
            "device_group": "default",
            "labels": "{}",
            "agent_version": "",
            "online": 0,
            "last_seen": 0.0,
            "running": "{}",
            "desired_revision": -1,
        },
    ),
    "desired": ({"device_id": str, "revision": int, "state": str}, ("device_id",), {}),
    "issues": (
        {
            "device_id": str,
            "update_id": str,
            "model": str,
            "version": str,
            "payload_sha256": str,
            "chunk_count": int,
            "created": float,
        },
        ("device_id", "update_id"),
        {},
    ),
    "rollouts": (
        {
            "id": int,
            "model": str,
            "version": str,
            "target_group": str,
            "spec": str,
            "state": str,
            "stage": int,
            "stage_started": float,
            "created": float,
            "updated": float,
            "reason": str,
            # The sequential gate's latest look (sync/gate.py), as JSON; "{}" under the
            # fixed-threshold gate.
            "gate": str,
        },
        ("id",),
        {"reason": "", "gate": "{}"},
    ),
    "rollout_devices": (
        {
            "rollout_id": int,
            "device_id": str,
            "stage": int,
            "from_version": str,
            "state": str,
            "reason": str,
            "updated": float,
        },
        ("rollout_id", "device_id"),
        {"reason": ""},
    ),
    "telemetry_requests": (
        {
            "device_id": str,
            "seq": int,
            "model": str,
            "version": str,
            "ts": float,
            "latency_ms": float,
            "rows": int,
            "confidence": float,
            "tier": str,
            "escalated": int,
            "degraded": int,
            "cache_hit": int,
            "agreement": float,
            "error": str,
        },
        ("device_id", "seq"),
        {},
    ),
    "telemetry_other": (
        {"device_id": str, "seq": int, "kind": str, "ts": float, "data": str},
        ("device_id", "seq"),
        {},
    ),
    "telemetry_cursor": (
        # dropped_at_ack: the device's drop counter when we last moved acked_seq, so a
        # gap can be matched against the drops reported since (see ingest.py).
        {"device_id": str, "acked_seq": int, "dropped": int, "dropped_at_ack": int},
        ("device_id",),
        {"acked_seq": 0, "dropped": 0, "dropped_at_ack": 0},
    ),
}
INDEXES = {
    "telemetry_requests": [["model", "version"]],
    "rollouts": [["model", "state"]],
    "rollout_devices": [["device_id"]],
}


def version_row(row: dict[str, Any]) -> VersionRow:
    return VersionRow(
        model=row["model"],
        version=row["version"],
        sha256=row["sha256"],
        size=row["size"],
        format=row["format"],
        card=ModelCard.model_validate_json(row["card"]),
        created=row["created"],
    )


def device_row(row: dict[str, Any]) -> DeviceRow:
    running = {
        name: RunningModel.model_validate(model)
        for name, model in json.loads(row["running"]).items()
    }
    return DeviceRow(
        device_id=row["device_id"],
        group=row["device_group"],
        labels=json.loads(row["labels"]),
        agent_version=row["agent_version"],
        online=bool(row["online"]),
        last_seen=row["last_seen"],
        running=running,
        desired_revision=row["desired_revision"],
    )


def rollout_row(row: dict[str, Any]) -> RolloutRow:
    return RolloutRow(
        id=row["id"],
        model=row["model"],
        version=row["version"],
        group=row["target_group"],
        spec=json.loads(row["spec"]),
        state=row["state"],
        stage=row["stage"],
        stage_started=row["stage_started"],
        created=row["created"],
        updated=row["updated"],
        reason=row["reason"],
        gate=json.loads(row["gate"] or "{}"),
    )
