"""What the sync client sees of an update: a live session view and the updater's counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_agent.updates.downloads import Download
from edgeserve.wire.manifest import UpdateManifest
from edgeserve.wire.sync_messages import UpdateProgress, UpdateStage


@dataclass(slots=True)
class UpdateStats:
    """Counters since start, for the agent's metrics endpoint."""

    offered: int = 0
    refused: int = 0
    already_running: int = 0
    chunks_accepted: int = 0
    chunks_duplicate: int = 0
    chunks_rejected: int = 0
    chunks_rotted: int = 0
    bytes_received: int = 0
    installed: int = 0
    failed: dict[str, int] = field(default_factory=dict)


class UpdateSession:
    """A live view of one update in progress (its counts change as chunks arrive)."""

    def __init__(self, download: Download) -> None:
        self._download = download

    @property
    def update_id(self) -> str:
        return self._download.update_id

    @property
    def manifest(self) -> UpdateManifest:
        return self._download.manifest

    @property
    def model(self) -> str:
        return self.manifest.model

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def received_chunks(self) -> int:
        return self._download.received

    @property
    def total_chunks(self) -> int:
        return self._download.total

    @property
    def complete(self) -> bool:
        return self._download.complete

    def progress(self, stage: UpdateStage = "download", reason: str = "") -> UpdateProgress:
        return UpdateProgress(
            version=self.version,
            update_id=self.update_id,
            stage=stage,
            received_chunks=self.received_chunks,
            total_chunks=self.total_chunks,
            reason=reason,
        )
