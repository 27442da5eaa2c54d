"""The learning loop: hard examples from the fleet's telemetry, a distilled edge version."""

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgeserve.artifacts import packaged_artifacts
from edgeserve.cli.main import app
from edgeserve.wire.model_card import ModelCard
from edgeserve.wire.telemetry import OutboxEntry, TelemetryBatch
from models.data import load_split, make_split
from models.distill import DistillConfig, NoHardExamples, distill_edge_version, distillation_loss
from models.evaluate import onnx_accuracy, run_onnx
from models.shift import shift_right, shifted_stream
from sync.ingest import hard_examples, ingest_batch
from sync.registry import Registry

EDGE = "digits-edge"


def hard_example(seq: int, row: list[float], model: str = EDGE) -> OutboxEntry:
    tensor = {"datatype": "FP32", "shape": [len(row)], "data": row}
    data = {"model": model, "version": "1", "edge_prediction": "3", "inputs": {"input": tensor}}
    return OutboxEntry(seq=seq, kind="hard_example", created=float(seq), data=data)


def upload(registry: Registry, device: str, entries: list[OutboxEntry]) -> None:
    batch = TelemetryBatch(device_id=device, from_seq=0, to_seq=len(entries), records=entries)
    ingest_batch(registry, batch)


@pytest.fixture(scope="module")
def stream_hard_examples() -> np.ndarray:
    """The shifted stream's rows the served edge model is least sure of (its lowest 10%)."""
    split = make_split(0)
    stream = shifted_stream(split.x_train, passes=1, noise=0.05, seed=1)
    logits = run_onnx(packaged_artifacts() / f"{EDGE}.onnx", stream)
    top = np.sort(torch.softmax(torch.from_numpy(logits), dim=1).numpy(), axis=1)[:, -1]
    return stream[np.argsort(top)[: len(stream) // 10]]


def test_with_no_teacher_weight_the_loss_is_cross_entropy():
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.arange(8)
    loss = distillation_loss(student, labels, teacher, temperature=4.0, soft_weight=0.0)
    assert torch.isclose(loss, torch.nn.functional.cross_entropy(student, labels))


def test_a_student_that_matches_its_teacher_pays_only_the_hard_label_share():
    logits = torch.randn(8, 10)
    labels = logits.argmax(dim=1)
    loss = distillation_loss(logits, labels, logits, temperature=4.0, soft_weight=0.7)
    expected = 0.3 * torch.nn.functional.cross_entropy(logits, labels)
    assert torch.isclose(loss, expected, atol=1e-6)


def test_hard_examples_are_read_for_one_model_oldest_first(tmp_path: Path):
    registry = Registry(tmp_path / "registry.db")
    upload(registry, "dev-a", [hard_example(1, [0.5] * 64), hard_example(2, [1.0] * 64)])
    upload(registry, "dev-b", [hard_example(1, [0.25] * 64, model="other")])
    found = hard_examples(registry, EDGE, "input")
    assert found.x.shape == (2, 64) and found.skipped == 0
    assert found.x[:, 0].tolist() == [0.5, 1.0]


def test_malformed_hard_examples_are_skipped_and_counted(tmp_path: Path):
    registry = Registry(tmp_path / "registry.db")
    short = hard_example(2, [0.5] * 10)
    broken = OutboxEntry(seq=3, kind="hard_example", created=3.0, data={"model": EDGE})
    upload(registry, "dev-a", [hard_example(1, [0.5] * 64), short, broken])
    found = hard_examples(registry, EDGE, "input")
    assert (len(found.x), found.skipped) == (1, 2)


def test_distilling_from_nothing_is_refused(tmp_path: Path):
    with pytest.raises(NoHardExamples):
        distill_edge_version(tmp_path, np.zeros((0, 64), dtype=np.float32), "2")


def test_the_distilled_version_learns_the_shift_and_keeps_the_clean_digits(
    tmp_path: Path, stream_hard_examples: np.ndarray
):
    result = distill_edge_version(tmp_path, stream_hard_examples, "2")
    x, y = load_split(packaged_artifacts(), "test")
    served = packaged_artifacts() / f"{EDGE}.onnx"
    shift_before = onnx_accuracy(served, shift_right(x), y)
    shift_after = onnx_accuracy(result.artifact, shift_right(x), y)
    assert shift_after >= shift_before + 0.10
    assert onnx_accuracy(result.artifact, x, y) >= onnx_accuracy(served, x, y) - 0.003
    card = result.card
    assert (card.version, card.file) == ("2", "digits-edge-v2.onnx")
    assert card.source["hard_examples"] == len(stream_hard_examples)
    assert card.router is not None and card.bank is not None
    assert card.bank.rows == 988 + len(stream_hard_examples)  # rebuilt with the hard examples


def test_a_model_trained_on_shuffled_labels_is_much_worse(
    tmp_path: Path, stream_hard_examples: np.ndarray
):
    config = DistillConfig(shuffle_labels=True, rebuild_bank=False)
    result = distill_edge_version(tmp_path, stream_hard_examples, "3", config)
    x, y = load_split(packaged_artifacts(), "test")
    assert onnx_accuracy(result.artifact, x, y) < 0.5
    served = ModelCard.load(packaged_artifacts() / f"{EDGE}.card.json")
    assert result.card.bank == served.bank  # kept: what the devices already hold


def test_the_cli_refuses_a_registry_without_hard_examples(tmp_path: Path):
    Registry(tmp_path / "registry.db").close()
    outcome = CliRunner().invoke(
        app, ["models", "distill", "--registry", str(tmp_path / "registry.db")]
    )
    assert outcome.exit_code == 1
    assert "no hard examples" in outcome.output


def test_the_cli_distills_the_registry_hard_examples_into_a_pushable_version(
    tmp_path: Path, stream_hard_examples: np.ndarray
):
    registry = Registry(tmp_path / "registry.db")
    rows = [hard_example(i + 1, row.tolist()) for i, row in enumerate(stream_hard_examples)]
    upload(registry, "dev-a", rows)
    registry.close()
    out = tmp_path / "distilled"
    arguments = ["--registry", str(tmp_path / "registry.db"), "--out", str(out)]
    arguments += ["--version", "2", "--keep-bank", "--epochs", "4"]
    outcome = CliRunner().invoke(app, ["models", "distill", *arguments])
    assert outcome.exit_code == 0, outcome.output
    card = ModelCard.load(out / "digits-edge.card.json")
    assert (card.version, card.source["hard_examples"]) == ("2", len(stream_hard_examples))
    assert card.source["distill"]["epochs"] == 4
    assert (out / card.file).is_file()
    assert "--gate sequential" in " ".join(outcome.output.split())
