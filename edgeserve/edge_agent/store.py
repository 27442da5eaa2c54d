"""The on-disk model store: an active and a previous slot per model, switched atomically.

::

    <state_dir>/models/<name>/
        slot-a/  <artifact> + card.json
        slot-b/  <artifact> + card.json
        state.json   {"active": "slot-a", "previous": "slot-b"}

A new version is written into the slot that is not active, fsynced and verified against
its card before ``state.json`` is replaced by rename, so a crash at any instant leaves
either the old or the new pointer, never a half-written one. Bytes are verified again
at every load: a model whose sha256 does not match its card is never handed to a runtime.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgeserve.wire.errors import IntegrityError, ModelNotFound
from edgeserve.wire.model_card import ModelCard, file_sha256

SLOTS = ("slot-a", "slot-b")
CARD_NAME = "card.json"
STATE_NAME = "state.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VerifiedModel:
    """A card and the path of artifact bytes that matched its sha256 just now."""

    card: ModelCard
    artifact: Path
    slot: str


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob(f"*/{STATE_NAME}"))

    def has(self, name: str) -> bool:
        return (self.root / name / STATE_NAME).exists()

    def install(self, card: ModelCard, artifact: Path) -> VerifiedModel:
        """Copy an artifact into the inactive slot, verify it, then make it active."""
        model_dir = self.root / card.name
        state = self._read_state(card.name) if self.has(card.name) else {}
        active = state.get("active")
        target = next(slot for slot in SLOTS if slot != active)
        slot_dir = model_dir / target
        shutil.rmtree(slot_dir, ignore_errors=True)
        slot_dir.mkdir(parents=True)
        _copy_synced(artifact, slot_dir / card.file)
        _write_synced(slot_dir / CARD_NAME, card.model_dump_json(indent=2).encode())
        verified = self._verify(card.name, target)
        self._write_state(card.name, {"active": target, "previous": active})
        log.info("model installed", extra={"model": card.name, "version": card.version})
        return verified

    def load_verified(self, name: str) -> VerifiedModel:
        """The active slot if its bytes verify, else the previous one; never unverified bytes."""
        if not self.has(name):
            raise ModelNotFound(f"model '{name}' is not in the store")
        state = self._read_state(name)
        failures: list[str] = []
        for slot in (state.get("active"), state.get("previous")):
            if slot is None:
                continue
            try:
                return self._verify(name, slot)
            except IntegrityError as exc:
                failures.append(exc.message)
                log.error("slot failed verification", extra={"model": name, "slot": slot})
        raise IntegrityError(f"no verified slot for model '{name}': {'; '.join(failures)}")

    def rollback(self, name: str) -> VerifiedModel:
        """Make the previous slot active again, after verifying it."""
        state = self._read_state(name)
        previous = state.get("previous")
        if previous is None:
            raise ModelNotFound(f"model '{name}' has no previous version to roll back to")
        verified = self._verify(name, previous)
        self._write_state(name, {"active": previous, "previous": state.get("active")})
        return verified

    def _verify(self, name: str, slot: str) -> VerifiedModel:
        slot_dir = self.root / name / slot
        try:
            card = ModelCard.load(slot_dir / CARD_NAME)
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"{name}/{slot}: unreadable card ({exc})") from exc
        artifact = slot_dir / card.file
        if not artifact.is_file():
            raise IntegrityError(f"{name}/{slot}: artifact {card.file} is missing")
        digest = file_sha256(artifact)
        if digest != card.sha256:
            raise IntegrityError(
                f"{name}/{slot}: sha256 {digest[:12]}… does not match card {card.sha256[:12]}…"
            )
        return VerifiedModel(card, artifact, slot)

    def _read_state(self, name: str) -> dict[str, str | None]:
        try:
            state: dict[str, str | None] = json.loads((self.root / name / STATE_NAME).read_text())
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"model '{name}': unreadable slot state ({exc})") from exc
        return state

    def _write_state(self, name: str, state: dict[str, str | None]) -> None:
        path = self.root / name / STATE_NAME
        tmp = path.with_suffix(".tmp")
        _write_synced(tmp, json.dumps(state).encode())
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _copy_synced(source: Path, target: Path) -> None:
    with source.open("rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
