"""Seed a repository folder from the packaged model cards (the embedded default)."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeserve.artifacts import packaged_artifacts
from edgeserve.wire.model_card import CARD_SUFFIX, ModelCard

DEFAULT_MODELS = ("digits-cloud", "digits-edge-fp32")


def config_from_card(card: ModelCard, max_batch_size: int = 64) -> str:
    """A ``config.toml`` for an ONNX artifact, taking its signature from the card."""
    lines = [
        f'name = "{card.name}"',
        'backend = "onnxruntime"',
        f"max_batch_size = {max_batch_size}",
        f"labels = {card.labels!r}".replace("'", '"'),
        f'logits_output = "{card.logits_output}"' if card.logits_output else "",
        f"temperature = {card.temperature}",
        "",
        "[batching]",
        "max_queue_delay_us = 2000",
        "",
    ]
    for kind, specs in (("inputs", card.inputs), ("outputs", card.outputs)):
        for spec in specs:
            lines += [
                f"[[{kind}]]",
                f'name = "{spec.name}"',
                f'datatype = "{spec.datatype}"',
                f"shape = {spec.shape}",
                "",
            ]
    return "\n".join(line for line in lines if line is not None) + "\n"


def seed_repository(root: Path, models: tuple[str, ...] = DEFAULT_MODELS) -> list[str]:
    """Add each packaged model missing from ``root`` as version 1; the names added."""
    added: list[str] = []
    source = packaged_artifacts()
    for name in models:
        model_dir = root / name
        if model_dir.exists():
            continue
        card = ModelCard.load(source / f"{name}{CARD_SUFFIX}")
        if card.format != "onnx":
            continue
        (model_dir / "1").mkdir(parents=True)
        shutil.copyfile(source / card.file, model_dir / "1" / "model.onnx")
        (model_dir / "config.toml").write_text(config_from_card(card))
        added.append(name)
    return added
