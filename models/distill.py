"""The learning loop's training step: the edge model distilled from the cloud model.

The fleet uploads the inputs its edge model was unsure of (telemetry records of kind
``hard_example``). A new edge version is trained, starting from the served version's
fp32 weights, on the original training digits plus those hard examples, with the cloud
model as teacher (Hinton et al., "Distilling the knowledge in a neural network", 2015):

    loss = (1 - w) · CE(student, label) + w · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

where ``label`` is the true label for a training digit and the cloud's answer for a hard
example (the teacher's top class: the cloud model is the one that answers escalations,
so its answer on the same input is what the gateway would have said). The soft term
carries the teacher's whole distribution — which wrong classes are close — and the
``T²`` keeps its gradients on the hard term's scale. Hard examples are repeated
``hard_repeat`` times an epoch: there are few of them next to ~1,000 training digits.

The result is then treated like any edge version: exported, quantized to int8 (the
activation ranges calibrated on the calibration split *and* the hard examples, so the
shifted inputs are not clipped), its temperature and router threshold refitted on the
calibration split, its trust-score bank rebuilt with the hard examples (or kept, for an
update to devices that cannot receive a new bank yet), and its card written with how it
was made. ``shuffle_labels`` trains a deliberately broken version (labels permuted, no
teacher): the rollout gate's test case for a model that must be stopped.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from edgeserve.artifacts import packaged_artifacts
from edgeserve.wire.model_card import CARD_SUFFIX, ModelCard
from models.bank import write_bank
from models.calibrate import calibrate_card
from models.data import FloatArray, LabelArray, load_split, make_split, split_file_name
from models.evaluate import run_onnx
from models.export import export_classifier
from models.finetune import load_edge_mlp, versioned_card
from models.quantize import QuantizeConfig, quantize_int8
from models.train import deterministic_torch

EDGE = "digits-edge"
EDGE_FP32 = "digits-edge-fp32"
CLOUD = "digits-cloud"


class NoHardExamples(ValueError):
    """Distillation was asked for with no hard examples to learn from."""


@dataclass(frozen=True)
class DistillConfig:
    """Everything that decides the distilled weights besides the data."""

    epochs: int = 12
    learning_rate: float = 5e-4
    batch_size: int = 64
    temperature: float = 4.0
    soft_weight: float = 0.7  # w above: the teacher's share of the loss
    hard_repeat: int = 4
    seed: int = 0
    shuffle_labels: bool = False
    rebuild_bank: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.hard_repeat < 1:
            raise ValueError("epochs, batch_size and hard_repeat must be at least 1")
        if not 0.0 <= self.soft_weight <= 1.0 or self.temperature <= 0:
            raise ValueError("soft_weight is in [0, 1] and temperature is positive")


@dataclass(frozen=True)
class Distilled:
    artifact: Path
    card: ModelCard
    hard_examples: int
    hard_label_agreement: float  # share of hard examples where the old edge matched the cloud


def distillation_loss(
    student: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    soft_weight: float,
) -> torch.Tensor:
    """The weighted sum of the hard-label loss and the softened teacher loss."""
    hard = functional.cross_entropy(student, labels)
    if soft_weight == 0.0:
        return hard
    soft = functional.kl_div(
        functional.log_softmax(student / temperature, dim=1),
        functional.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - soft_weight) * hard + soft_weight * temperature**2 * soft


def train_distilled(
    model: nn.Module,
    x: FloatArray,
    labels: LabelArray,
    teacher_logits: FloatArray,
    config: DistillConfig,
) -> nn.Module:
    """Adam over the distillation loss, deterministic on one thread like ``models.train``."""
    features = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    targets = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    teacher = torch.from_numpy(np.ascontiguousarray(teacher_logits, dtype=np.float32))
    soft_weight = 0.0 if config.shuffle_labels else config.soft_weight
    with deterministic_torch(config.seed):
        order_rng = torch.Generator().manual_seed(config.seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        model.train()
        for _ in range(config.epochs):
            permutation = torch.randperm(len(targets), generator=order_rng)
            for start in range(0, len(targets), config.batch_size):
                batch = permutation[start : start + config.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = distillation_loss(
                    model(features[batch]),
                    targets[batch],
                    teacher[batch],
                    config.temperature,
                    soft_weight,
                )
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
    return model.eval()


def training_set(
    hard_x: FloatArray, teacher_path: Path, config: DistillConfig
) -> tuple[FloatArray, LabelArray, FloatArray, LabelArray]:
    """Training digits plus repeated hard examples: inputs, labels, teacher logits, and
    the cloud's labels of the hard examples alone."""
    split = make_split(0)
    cloud_labels = run_onnx(teacher_path, hard_x).argmax(axis=1).astype(np.int64)
    x = np.concatenate([split.x_train, *([hard_x] * config.hard_repeat)])
    y = np.concatenate([split.y_train, *([cloud_labels] * config.hard_repeat)])
    if config.shuffle_labels:
        y = np.random.default_rng(config.seed).permutation(y)
    return x, y, run_onnx(teacher_path, x), cloud_labels


def distill_edge_version(
    out_dir: Path,
    hard_x: FloatArray,
    version: str,
    config: DistillConfig | None = None,
    source: Path | None = None,
) -> Distilled:
    """Write ``digits-edge`` ``version`` (int8 ONNX, card, bank) into ``out_dir``.

    ``source`` holds the served version (its fp32 twin, card and bank), the cloud model
    and the splits; the packaged artifacts by default. The card is ``digits-edge.card.json``
    in ``out_dir``, beside copies of what calibration reads.
    """
    config = config or DistillConfig()
    source = source or packaged_artifacts()
    if len(hard_x) == 0:
        raise NoHardExamples("no hard examples to distill from")
    hard_x = np.ascontiguousarray(hard_x, dtype=np.float32).reshape(len(hard_x), -1)
    out_dir.mkdir(parents=True, exist_ok=True)
    _copy_inputs(source, out_dir)
    base = ModelCard.load(source / f"{EDGE}{CARD_SUFFIX}")
    x, y, teacher, cloud_labels = training_set(hard_x, source / f"{CLOUD}.onnx", config)
    edge_labels = run_onnx(source / base.file, hard_x).argmax(axis=1)
    model = train_distilled(load_edge_mlp(source / f"{EDGE_FP32}.onnx"), x, y, teacher, config)
    fp32 = export_classifier(model, out_dir / f"{EDGE}-v{version}.fp32.onnx")
    x_calibration, _ = load_split(source, "calibration")
    int8 = quantize_int8(
        fp32,
        out_dir / f"{EDGE}-v{version}.onnx",
        np.concatenate([x_calibration, hard_x]),
        QuantizeConfig(),
    )
    bank = base.bank
    if config.rebuild_bank:
        split = make_split(0)
        bank = write_bank(
            out_dir,
            np.concatenate([split.x_train, hard_x]),
            np.concatenate([split.y_train, cloud_labels]),
        )
    card = _card(base, int8, version, config, len(hard_x)).model_copy(update={"bank": bank})
    card.save(out_dir / f"{EDGE}{CARD_SUFFIX}")
    router = base.router
    if router is not None and router.target_value is not None:
        # The served version's policy, refitted: same score, same target.
        target = router.target_kind
        card = calibrate_card(out_dir, EDGE, CLOUD, router.score, target, router.target_value)
    agreement = float(np.mean(edge_labels == cloud_labels))
    return Distilled(int8, card, len(hard_x), agreement)


def _copy_inputs(source: Path, out_dir: Path) -> None:
    """What calibration reads beside the new card: the cloud model, the splits, the bank."""
    names = [f"{CLOUD}.onnx", f"{CLOUD}{CARD_SUFFIX}"]
    names += [split_file_name("calibration"), split_file_name("test")]
    base = ModelCard.load(source / f"{EDGE}{CARD_SUFFIX}")
    if base.bank is not None:
        names.append(base.bank.file)
    for name in names:
        if source.resolve() != out_dir.resolve():
            shutil.copyfile(source / name, out_dir / name)


def _card(base: ModelCard, int8: Path, version: str, config: DistillConfig, hard: int) -> ModelCard:
    how = "shuffled labels, no teacher (a deliberately worse model)"
    source = {
        **base.source,
        "derived_from": f"{EDGE}:{base.version}",
        "distillation": how if config.shuffle_labels else "cloud model as teacher",
        "teacher": CLOUD,
        "hard_examples": hard,
        "distill": asdict(config),
    }
    return versioned_card(base, int8, version, int8.parent, source)
