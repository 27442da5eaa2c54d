"""The MQTT topic tree, versioned at its root; the only place topic strings are built.

::

    edgeserve/v1/devices/<device>/status                 device → fleet  retained, last will
    edgeserve/v1/devices/<device>/reported               device → fleet  retained
    edgeserve/v1/devices/<device>/desired                fleet → device  retained
    edgeserve/v1/devices/<device>/update/<id>/request    device → fleet  chunks it lacks
    edgeserve/v1/devices/<device>/update/<id>/chunk/<i>  fleet → device  raw bytes, QoS 1
    edgeserve/v1/devices/<device>/update/result          device → fleet  outcome of an update
    edgeserve/v1/devices/<device>/telemetry              device → fleet  zstd batch
    edgeserve/v1/devices/<device>/telemetry/ack          fleet → device  highest contiguous seq
    edgeserve/v1/devices/<device>/cert/request           device → fleet  its certificate (+ CSR)
    edgeserve/v1/devices/<device>/cert/issued            fleet → device  renewed certificate

A device reads and writes only under its own ``devices/<device>/`` subtree (the broker's
ACL enforces it, ``deploy/mosquitto/``). A rollout to a group is resolved by the sync
service into each member's own ``desired`` topic, so no device ever reads outside its
subtree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ROOT = "edgeserve/v1"
DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
UPDATE_ID_PATTERN = re.compile(r"^[0-9a-f]{8,64}$")

DeviceTopicKind = Literal[
    "status",
    "reported",
    "desired",
    "update_request",
    "chunk",
    "update_result",
    "telemetry",
    "telemetry_ack",
    "cert_request",
    "cert_issued",
]


def check_device_id(device_id: str) -> str:
    """A device id is one topic level: no ``/``, ``+``, ``#`` or other surprises."""
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise ValueError(f"invalid device id {device_id!r} (letters, digits, '_', '.', '-')")
    return device_id


def device_root(device_id: str) -> str:
    return f"{ROOT}/devices/{check_device_id(device_id)}"


def status(device_id: str) -> str:
    return f"{device_root(device_id)}/status"


def reported(device_id: str) -> str:
    return f"{device_root(device_id)}/reported"


def desired(device_id: str) -> str:
    return f"{device_root(device_id)}/desired"


def update_request(device_id: str, update_id: str) -> str:
    return f"{device_root(device_id)}/update/{update_id}/request"


def chunk(device_id: str, update_id: str, index: int) -> str:
    return f"{device_root(device_id)}/update/{update_id}/chunk/{index}"


def chunk_filter(device_id: str) -> str:
    return f"{device_root(device_id)}/update/+/chunk/+"


def update_result(device_id: str) -> str:
    return f"{device_root(device_id)}/update/result"


def telemetry(device_id: str) -> str:
    return f"{device_root(device_id)}/telemetry"


def telemetry_ack(device_id: str) -> str:
    return f"{device_root(device_id)}/telemetry/ack"


def cert_request(device_id: str) -> str:
    return f"{device_root(device_id)}/cert/request"


def cert_issued(device_id: str) -> str:
    return f"{device_root(device_id)}/cert/issued"


# What each side subscribes to.
def device_subscriptions(device_id: str) -> list[str]:
    return [
        desired(device_id),
        chunk_filter(device_id),
        telemetry_ack(device_id),
        cert_issued(device_id),
    ]


FLEET_SUBSCRIPTIONS = [
    f"{ROOT}/devices/+/status",
    f"{ROOT}/devices/+/reported",
    f"{ROOT}/devices/+/update/+/request",
    f"{ROOT}/devices/+/update/result",
    f"{ROOT}/devices/+/telemetry",
    f"{ROOT}/devices/+/cert/request",
]


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A parsed topic under ``devices/<device>/``."""

    device_id: str
    kind: DeviceTopicKind
    update_id: str | None = None
    index: int | None = None


_FIXED_KINDS: dict[tuple[str, ...], DeviceTopicKind] = {
    ("status",): "status",
    ("reported",): "reported",
    ("desired",): "desired",
    ("telemetry",): "telemetry",
    ("telemetry", "ack"): "telemetry_ack",
    ("update", "result"): "update_result",
    ("cert", "request"): "cert_request",
    ("cert", "issued"): "cert_issued",
}


def parse(topic: str) -> DeviceTopic:
    """Parse a device topic; ``ValueError`` for anything outside the tree."""
    parts = topic.split("/")
    if len(parts) < 5 or "/".join(parts[:3]) != f"{ROOT}/devices":
        raise ValueError(f"topic {topic!r} is not under {ROOT}/devices/")
    device_id = check_device_id(parts[3])
    rest = parts[4:]
    kind = _FIXED_KINDS.get(tuple(rest))
    if kind is not None:
        return DeviceTopic(device_id, kind)
    if len(rest) >= 3 and rest[0] == "update" and UPDATE_ID_PATTERN.fullmatch(rest[1]):
        if rest[2:] == ["request"]:
            return DeviceTopic(device_id, "update_request", rest[1])
        if len(rest) == 4 and rest[2] == "chunk" and rest[3].isdigit() and len(rest[3]) < 9:
            return DeviceTopic(device_id, "chunk", rest[1], int(rest[3]))
    raise ValueError(f"unknown device topic {topic!r}")
