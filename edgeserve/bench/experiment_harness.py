"""A model repository for experiments: one model, three versions that really differ.

``digits-cloud`` version 1 is the packaged CNN (the control), version 2 the packaged
edge MLP (a real candidate: same signature, a little less accurate, mostly agreeing),
version 3 an MLP with random weights (a broken candidate that agrees by chance). The
config serves all three (``[version_policy] latest = 3``). The benchmark, the demo and
the tests use it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cloud_gateway.repository.seed import config_from_card
from edgeserve.artifacts import packaged_artifacts
from edgeserve.bench.gateway_harness import build_heavy_mlp
from edgeserve.wire.model_card import ModelCard

MODEL = "digits-cloud"
CONTROL, CANDIDATE, BROKEN = "1", "2", "3"


def experiment_repository(root: Path, model: str = MODEL, queue_delay_us: int = 2000) -> Path:
    """Write the three versions as ``model`` under ``root``; returns ``root``."""
    source = packaged_artifacts()
    card = ModelCard.load(source / f"{MODEL}.card.json").model_copy(update={"name": model})
    folder = root / model
    for version in (CONTROL, CANDIDATE, BROKEN):
        (folder / version).mkdir(parents=True, exist_ok=True)
    # config.toml last: a running gateway that rescans sees the model whole or not at all.
    shutil.copyfile(source / card.file, folder / CONTROL / "model.onnx")
    edge = ModelCard.load(source / "digits-edge-fp32.card.json")
    shutil.copyfile(source / edge.file, folder / CANDIDATE / "model.onnx")
    build_heavy_mlp(folder / BROKEN / "model.onnx", hidden=64, layers=1, seed=3)
    text = config_from_card(card).replace("delay_us = 2000", f"delay_us = {queue_delay_us}")
    (folder / "config.toml").write_text(text + "\n[version_policy]\nlatest = 3\n")
    return root
