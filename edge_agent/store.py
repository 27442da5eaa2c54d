"""The on-disk model store: an active and a previous slot per model, switched atomically.

::

    <state_dir>/models/<name>/
        slot-a/  <artifact> + card.json
        slot-b/  <artifact> + card.json
        state.json   {"active": "slot-a", "previous": "slot-b"}

Installing is two steps so an update can test a new version before it serves:
``stage`` writes the new bytes into the slot that is not serving, fsyncs and verifies
them against the card, and ``activate`` then replaces ``state.json`` by rename. Before
``stage`` touches a slot it drops any pointer ``state.json`` holds to it, so a crash at
any instant leaves a pointer only to slots that were complete when it was written, and a
staged version that never passed its self-test is never loaded, not even as a fallback.
Bytes are verified again at every load: a model whose sha256 does not match its card is
never handed to a runtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgeserve.durable import fsync_dir, write_atomic
from edgeserve.wire.errors import IntegrityError, InvalidInput, ModelNotFound
from edgeserve.wire.model_card import ModelCard, file_sha256

SLOTS = ("slot-a", "slot-b")
CARD_NAME = "card.json"
STATE_NAME = "state.json"

# Names from a card become folder and file names: no separators, no "..", no hidden files.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")

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

    def install(self, card: ModelCard, artifact: Path | bytes) -> VerifiedModel:
        """Stage an artifact into the inactive slot, verify it, then make it active."""
        staged = self.stage(card, artifact)
        verified = self.activate(card.name, staged.slot)
        log.info("model installed", extra={"model": card.name, "version": card.version})
        return verified

    def stage(
        self, card: ModelCard, artifact: Path | bytes, bank_bytes: bytes | None = None
    ) -> VerifiedModel:
        """Write an artifact (a file or its bytes) into the slot not serving, and verify it.

        Nothing switches: the model keeps serving from its current slot until
        ``activate``. Raises IntegrityError when the bytes written do not match the card.
        A reference bank the card names comes as ``bank_bytes`` (an update that carries
        it), from beside an artifact file, or, for artifact bytes, from the serving slot
        when its sha256 is the same; without one the slot still serves, and the router
        scores without the bank.
        """
        check_card_names(card)
        bank = None if bank_bytes is not None else self._bank_source(card, artifact)
        target = self._staging_slot(card.name)
        slot_dir = self.root / card.name / target
        shutil.rmtree(slot_dir, ignore_errors=True)
        slot_dir.mkdir(parents=True)
        if isinstance(artifact, bytes):
            _write_synced(slot_dir / card.file, artifact)
        else:
            _copy_synced(artifact, slot_dir / card.file)
        if card.bank is not None and bank_bytes is not None:
            _write_synced(slot_dir / card.bank.file, bank_bytes)
        elif card.bank is not None and bank is not None and bank.is_file():
            _copy_synced(bank, slot_dir / card.bank.file)
        _write_synced(slot_dir / CARD_NAME, card.model_dump_json(indent=2).encode())
        fsync_dir(slot_dir)
        fsync_dir(slot_dir.parent)
        return self._verify(card.name, target)

    def activate(self, name: str, slot: str, keep_previous: bool = True) -> VerifiedModel:
        """Make ``slot`` active after verifying it; the old active slot becomes previous.

        ``keep_previous=False`` forgets the old active slot instead, for switching back
        from a version that must not be a fallback.
        """
        if slot not in SLOTS:
            raise InvalidInput(f"unknown slot '{slot}'")
        verified = self._verify(name, slot)
        state = self._read_state(name) if self.has(name) else {}
        old = state.get("active")
        previous = old if keep_previous and old != slot else None
        if state != {"active": slot, "previous": previous}:
            self._write_state(name, {"active": slot, "previous": previous})
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

    def read_active_bytes(self, name: str) -> tuple[ModelCard, bytes]:
        """The card and bytes of the slot ``load_verified`` serves, hashed as read.

        Hashing the very bytes returned (not the file before reading it) means a delta is
        never applied to bytes that changed between the check and the use.
        """
        verified = self.load_verified(name)
        data = verified.artifact.read_bytes()
        if hashlib.sha256(data).hexdigest() != verified.card.sha256:
            raise IntegrityError(f"{name}/{verified.slot}: bytes changed while being read")
        return verified.card, data

    def rollback(self, name: str) -> VerifiedModel:
        """Make the previous slot active again, after verifying it."""
        state = self._read_state(name)
        previous = state.get("previous")
        if previous is None:
            raise ModelNotFound(f"model '{name}' has no previous version to roll back to")
        verified = self._verify(name, previous)
        self._write_state(name, {"active": previous, "previous": state.get("active")})
        return verified

    def _bank_source(self, card: ModelCard, artifact: Path | bytes) -> Path | None:
        """Where the bank the card names comes from (verified later, with the slot)."""
        if card.bank is None:
            return None
        if isinstance(artifact, Path):
            return artifact.parent / card.bank.file
        if not self.has(card.name):
            return None
        try:
            serving = self.load_verified(card.name)
        except IntegrityError:
            return None
        same = serving.card.bank is not None and serving.card.bank.sha256 == card.bank.sha256
        return serving.artifact.parent / card.bank.file if same else None

    def _staging_slot(self, name: str) -> str:
        """The slot a new version may overwrite: never the one serving now.

        Usually the slot that is not active; if the active slot failed verification and
        the previous one serves, the rotten active slot is overwritten instead. Any
        pointer to the chosen slot is dropped (fsynced) before its bytes are touched.
        """
        if not self.has(name):
            return SLOTS[0]
        try:
            serving: str | None = self.load_verified(name).slot
        except IntegrityError:
            serving = None
        state = self._read_state(name)
        keep = serving or state.get("active") or SLOTS[1]
        detached: dict[str, str | None] = {
            "active": serving or state.get("active"),
            "previous": None,
        }
        if detached != state:
            self._write_state(name, detached)
        return next(slot for slot in SLOTS if slot != keep)

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
        if card.bank is not None:
            # A missing bank only costs the router its trust score (it falls back to the
            # softmax); an altered one is refused like altered model bytes.
            bank = slot_dir / card.bank.file
            if bank.is_file() and file_sha256(bank) != card.bank.sha256:
                raise IntegrityError(
                    f"{name}/{slot}: bank {card.bank.file} does not match its card"
                )
        return VerifiedModel(card, artifact, slot)

    def _read_state(self, name: str) -> dict[str, str | None]:
        try:
            state: dict[str, str | None] = json.loads((self.root / name / STATE_NAME).read_text())
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"model '{name}': unreadable slot state ({exc})") from exc
        return state

    def _write_state(self, name: str, state: dict[str, str | None]) -> None:
        write_atomic(self.root / name / STATE_NAME, json.dumps(state).encode())


def check_card_names(card: ModelCard) -> None:
    """Refuse a card whose model or file name could escape its folder on disk."""
    names = [("model name", card.name), ("artifact file", card.file)]
    if card.bank is not None:
        names.append(("bank file", card.bank.file))
    for what, value in names:
        if not _SAFE_NAME.match(value) or value == CARD_NAME:
            raise InvalidInput(f"{what} {value!r} is not a safe file name")
    if card.bank is not None and card.bank.file == card.file:
        raise InvalidInput(f"bank file {card.bank.file!r} is the artifact's own name")


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
