"""The fleet simulator itself, at 20 devices with the small reference model.

The same ``run_size`` as ``edgeserve bench fleet-sim`` (real Mosquitto with per-device
certificates, the real sync service), on digits-edge: a rollout, a rollout through a
broker kill, telemetry drained. The 1,000-device runs are a benchmark, not a test.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgeserve.artifacts import packaged_artifacts
from edgeserve.bench.fleet_sim import run_size
from edgeserve.bench.fleet_sim_model import SimRelease
from edgeserve.broker import find_mosquitto
from edgeserve.wire.model_card import CARD_SUFFIX, ModelCard
from models.finetune import FINE_TUNE, build_edge_version

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed"),
]


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SimRelease]:
    folder = tmp_path_factory.mktemp("releases")
    card = ModelCard.load(packaged_artifacts() / f"digits-edge{CARD_SUFFIX}")
    found = {"1": SimRelease(packaged_artifacts() / card.file, _bare(card))}
    for version, seed in (("2", 1), ("3", 2)):
        artifact, new = build_edge_version(
            folder / version, version, replace(FINE_TUNE, seed=seed, epochs=5)
        )
        found[version] = SimRelease(artifact, _bare(new))
    return found


def test_twenty_simulated_devices_roll_out_survive_a_broker_kill_and_lose_no_record(
    tmp_path: Path, releases: dict[str, SimRelease]
) -> None:
    row = run_size(tmp_path, 20, releases, records_per_s=10, say=lambda line: None)

    assert row.rollout_state == "completed"
    assert row.kill_rollout_state == "completed"
    assert row.devices_left_behind == 0
    assert row.reconnect_all_s < 30  # full jitter, capped at 8 s a wait
    assert row.records_made > 20 * 10  # telemetry ran through both rollouts
    assert (row.records_pending_at_end, row.records_doubled) == (0, 0)
    assert row.rollout_broker_mb > 0


def _bare(card: ModelCard) -> ModelCard:
    """The card without its routing bank: simulated devices do not route, and the bank is
    another upload."""
    return card.model_copy(update={"bank": None, "router": None})
