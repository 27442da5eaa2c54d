"""Staging and activation in the model store: a new version waits in the inactive slot.

Uses the packaged int8 ``digits-edge`` as v1 and its fp32 build as v2 (same tensor
contract, different bytes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edge_agent.store import ModelStore
from edgeserve.artifacts import packaged_artifacts
from edgeserve.wire.errors import IntegrityError, InvalidInput
from edgeserve.wire.model_card import ModelCard

MODEL = "digits-edge"


def _version(version: str) -> tuple[ModelCard, bytes]:
    source = packaged_artifacts()
    card = ModelCard.load(source / f"{MODEL}.card.json")
    data = (source / ("digits-edge-fp32.onnx" if version == "2" else card.file)).read_bytes()
    update = {"version": version, "sha256": hashlib.sha256(data).hexdigest()}
    return card.model_copy(update={**update, "size_bytes": len(data)}), data


def _state(store: ModelStore) -> dict[str, str | None]:
    state: dict[str, str | None] = json.loads((store.root / MODEL / "state.json").read_text())
    return state


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    store = ModelStore(tmp_path / "models")
    store.install(*_version("1"))
    return store


def test_stage_writes_the_inactive_slot_without_switching(store):
    staged = store.stage(*_version("2"))
    serving = store.load_verified(MODEL)
    assert (serving.card.version, staged.card.version) == ("1", "2")
    assert staged.slot != serving.slot
    assert staged.artifact.read_bytes() == _version("2")[1]


def test_activate_switches_and_keeps_the_old_slot_as_previous(store):
    old = store.load_verified(MODEL)
    staged = store.stage(*_version("2"))
    store.activate(MODEL, staged.slot)
    assert _state(store) == {"active": staged.slot, "previous": old.slot}
    assert ModelStore(store.root).load_verified(MODEL).card.version == "2"


def test_activate_without_keeping_previous_forgets_the_old_slot(store):
    old = store.load_verified(MODEL)
    staged = store.stage(*_version("2"))
    store.activate(MODEL, staged.slot)
    store.activate(MODEL, old.slot, keep_previous=False)
    assert _state(store) == {"active": old.slot, "previous": None}


def test_stage_refuses_bytes_that_do_not_match_the_card(store):
    card, data = _version("2")
    with pytest.raises(IntegrityError, match="does not match card"):
        store.stage(card, data[:-1] + bytes([data[-1] ^ 1]))
    assert store.load_verified(MODEL).card.version == "1"


def test_activate_refuses_a_slot_whose_bytes_do_not_verify(store):
    staged = store.stage(*_version("2"))
    staged.artifact.write_bytes(b"bit rot")
    with pytest.raises(IntegrityError):
        store.activate(MODEL, staged.slot)
    assert store.load_verified(MODEL).card.version == "1"


def test_a_staged_slot_is_never_a_fallback(store):
    v2 = store.install(*_version("2"))
    staged = store.stage(*_version("3"))
    assert _state(store) == {"active": v2.slot, "previous": None}
    v2.artifact.write_bytes(b"bit rot")
    with pytest.raises(IntegrityError, match="no verified slot"):
        store.load_verified(MODEL)
    assert staged.card.version == "3"


def test_stage_never_overwrites_the_slot_that_serves(store):
    v1 = store.load_verified(MODEL)
    v2 = store.install(*_version("2"))
    v2.artifact.write_bytes(b"bit rot")
    assert store.load_verified(MODEL).slot == v1.slot
    staged = store.stage(*_version("3"))
    assert staged.slot == v2.slot
    assert store.load_verified(MODEL).card.version == "1"


def test_a_stage_interrupted_midway_leaves_the_old_model_loading(store):
    card, data = _version("2")
    installed = store.install(card, data)
    staged = store.stage(*_version("3"))
    staged.artifact.write_bytes(data[: len(data) // 2])  # as a kill -9 mid-write leaves it
    reopened = ModelStore(store.root)
    assert reopened.load_verified(MODEL).slot == installed.slot
    assert staged.slot not in _state(reopened).values()  # not active, not a fallback


def test_read_active_bytes_returns_the_verified_bytes_that_serve(store):
    card, data = store.read_active_bytes(MODEL)
    assert (card.version, hashlib.sha256(data).hexdigest()) == ("1", card.sha256)


def test_install_accepts_bytes_as_well_as_a_file(tmp_path):
    store = ModelStore(tmp_path / "fresh")
    card, data = _version("2")
    assert store.install(card, data).card.version == "2"
    assert _state(store)["previous"] is None


@pytest.mark.parametrize(
    "field, value", [("file", "../escape.onnx"), ("file", "card.json"), ("name", "a/b")]
)
def test_names_that_could_escape_the_model_folder_are_refused(tmp_path, field, value):
    card, data = _version("2")
    with pytest.raises(InvalidInput, match="not a safe file name"):
        ModelStore(tmp_path / "fresh").stage(card.model_copy(update={field: value}), data)
