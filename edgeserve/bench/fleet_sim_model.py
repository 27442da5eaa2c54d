"""The model a simulated fleet updates: a 51 MB fp32 MLP and two last-layer successors.

``bench delta``'s wide MLP (64 -> 2048 -> 4096 -> 1024 -> 10, 12.7M parameters) is the
base every device runs; v2 and v3 retrain only its output layer for a few steps on the
digits, as a fine-tune of the head would, so each update is a last-layer delta of a
model of realistic size. The files are cached in a folder and reused across runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgeserve.artifacts import packaged_artifacts
from edgeserve.bench.delta_cases import WideMLP
from edgeserve.wire.model_card import CARD_SUFFIX, ModelCard
from models.data import NUM_FEATURES, load_split
from models.export import export_onnx_bytes

MODEL = "digits-wide"
VERSIONS = ("1", "2", "3")


@dataclass(frozen=True)
class SimRelease:
    artifact: Path
    card: ModelCard


def build_releases(folder: Path) -> dict[str, SimRelease]:
    """v1 (seeded weights) and v2, v3 (each the previous one with its head retrained)."""
    folder.mkdir(parents=True, exist_ok=True)
    if all((folder / f"{MODEL}-v{v}{CARD_SUFFIX}").is_file() for v in VERSIONS):
        return {v: _load(folder, v) for v in VERSIONS}
    torch.manual_seed(0)
    model = WideMLP()
    x, y = load_split(packaged_artifacts(), "calibration")
    releases = {"1": _save(folder, "1", model)}
    for step, version in enumerate(VERSIONS[1:], start=1):
        _retrain_head(model, torch.from_numpy(x), torch.from_numpy(y).long(), seed=step)
        releases[version] = _save(folder, version, model)
    return releases


def _retrain_head(model: WideMLP, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.head.parameters(), lr=1e-2)
    loss = nn.CrossEntropyLoss()
    model.train()
    for _ in range(5):
        optimizer.zero_grad()
        loss(model(x), y).backward()
        optimizer.step()


def _save(folder: Path, version: str, model: WideMLP) -> SimRelease:
    data = export_onnx_bytes(model, torch.zeros(1, NUM_FEATURES))
    artifact = folder / f"{MODEL}-v{version}.onnx"
    artifact.write_bytes(data)
    template = ModelCard.load(packaged_artifacts() / f"digits-edge-fp32{CARD_SUFFIX}")
    card = template.model_copy(
        update={
            "name": MODEL,
            "version": version,
            "file": artifact.name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data),
            "parameters": sum(p.numel() for p in model.parameters()),
            "metrics": None,
            "calibration": None,
            "router": None,
            "bank": None,
            "source": {"fine_tune": "output layer only" if version != "1" else "seeded"},
        }
    )
    card.save(folder / f"{MODEL}-v{version}{CARD_SUFFIX}")
    return SimRelease(artifact, card)


def _load(folder: Path, version: str) -> SimRelease:
    card = ModelCard.load(folder / f"{MODEL}-v{version}{CARD_SUFFIX}")
    return SimRelease(folder / card.file, card)
