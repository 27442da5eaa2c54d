"""The state the agent's sync handlers share: one ``SyncContext`` per broker connection.

Plain data: the parts the handlers call (core, router, updater, uploader, a ``publish``
callable, metrics) and the per-connection state (desired revision, open download
windows, installs and fetches running), so tests build one from real objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.metrics import SyncMetrics
from edgeserve.wire.manifest import SignedManifest

if TYPE_CHECKING:
    from edge_agent.core import AgentCore
    from edge_agent.outbox import Outbox
    from edge_agent.router import Router
    from edge_agent.sync.telemetry import TelemetryUploader
    from edge_agent.updates import Updater
    from edge_agent.updates.ranges import RangeFetcher

WINDOW = 256
Publish = Callable[[str, bytes, bool], None]  # topic, payload, retain


@dataclass(slots=True)
class Window:
    """One update being downloaded: the chunks asked for and when anything last arrived."""

    update_id: str
    model: str
    version: str
    total: int
    requested: set[int] = field(default_factory=set)
    last_activity: float = 0.0
    # "http" while a Range fetch runs (the stall check leaves it alone), else "mqtt".
    transport: str = "mqtt"


@dataclass(slots=True)
class SyncState:
    desired_revision: int = -1
    windows: dict[str, Window] = field(default_factory=dict)
    finishing: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    fetching: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # Manifests the updater could not take yet (another install of the model running).
    deferred: dict[str, SignedManifest] = field(default_factory=dict)
    # How many of the updater's rotten chunks are already in the rejected counter.
    rotted_counted: int = 0


@dataclass(slots=True)
class SyncContext:
    device_id: str
    core: AgentCore
    router: Router
    updater: Updater
    public_key: Ed25519PublicKey
    metrics: SyncMetrics
    publish: Publish = field(default=lambda topic, payload, retain: None)  # set by SyncClient
    uploader: TelemetryUploader | None = None
    outbox: Outbox | None = None
    group: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    chunk_timeout_s: float = 10.0
    window: int = WINDOW
    bulk: RangeFetcher | None = None  # fetches payloads whose manifest names a URL
    state: SyncState = field(default_factory=SyncState)
