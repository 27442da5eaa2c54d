"""The model store: verified installs, atomic switches, and never loading bad bytes."""

from pathlib import Path

import pytest

from edge_agent.store import ModelStore
from edgeserve.wire.errors import IntegrityError, ModelNotFound
from edgeserve.wire.model_card import ModelCard, TensorSpec, file_sha256


def _artifact(tmp_path: Path, version: str, content: bytes) -> tuple[ModelCard, Path]:
    path = tmp_path / f"src-{version}" / "m.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    card = ModelCard(
        name="m",
        version=version,
        format="onnx",
        file="m.onnx",
        sha256=file_sha256(path),
        size_bytes=len(content),
        inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 4])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 2])],
    )
    return card, path


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


def test_install_makes_the_new_version_active_and_keeps_the_old_as_previous(store, tmp_path):
    store.install(*_artifact(tmp_path, "1", b"one"))
    store.install(*_artifact(tmp_path, "2", b"two"))
    assert store.load_verified("m").card.version == "2"
    assert store.rollback("m").card.version == "1"
    assert store.load_verified("m").card.version == "1"


def test_install_refuses_bytes_that_do_not_match_the_card(store, tmp_path):
    card, path = _artifact(tmp_path, "1", b"one")
    path.write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="does not match"):
        store.install(card, path)
    assert not store.has("m")


def test_corrupted_active_slot_falls_back_to_the_verified_previous_one(store, tmp_path):
    store.install(*_artifact(tmp_path, "1", b"one"))
    active = store.install(*_artifact(tmp_path, "2", b"two"))
    active.artifact.write_bytes(b"bit rot")
    assert store.load_verified("m").card.version == "1"


def test_no_verified_slot_is_an_integrity_error(store, tmp_path):
    active = store.install(*_artifact(tmp_path, "1", b"one"))
    active.artifact.write_bytes(b"bit rot")
    with pytest.raises(IntegrityError, match="no verified slot"):
        store.load_verified("m")


def test_failed_install_leaves_the_serving_version_untouched(store, tmp_path):
    store.install(*_artifact(tmp_path, "1", b"one"))
    card, path = _artifact(tmp_path, "2", b"two")
    path.write_bytes(b"truncat")
    with pytest.raises(IntegrityError):
        store.install(card, path)
    assert store.load_verified("m").card.version == "1"


def test_unknown_model_is_not_found(store):
    with pytest.raises(ModelNotFound):
        store.load_verified("nope")


def test_rollback_without_previous_version_is_refused(store, tmp_path):
    store.install(*_artifact(tmp_path, "1", b"one"))
    with pytest.raises(ModelNotFound, match="no previous"):
        store.rollback("m")
