"""The fleet view of the router's scores: a shifted input distribution shows per version."""

from pathlib import Path

import numpy as np
import pytest

from edgeserve.wire.telemetry import OutboxEntry, TelemetryBatch, decode_batch, encode_batch
from sync.ingest import fleet_summary, ingest_batch
from sync.registry import Registry


def _batch(device: str, version: str, scores: list[float | None]) -> TelemetryBatch:
    common = {"model": "digits-edge", "version": version, "latency_ms": 1.0}
    held = {"threshold": 0.9, "window_rate": 0.1}
    records = [
        OutboxEntry(
            seq=seq, kind="request", created=100.0 + seq, data={**common, **held, "confidence": s}
        )
        for seq, s in enumerate(scores, start=1)
    ]
    sent = TelemetryBatch(device_id=device, from_seq=0, to_seq=len(scores), records=records)
    return decode_batch(encode_batch(sent))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry.db")


def test_each_version_reports_the_deciles_and_median_of_its_scores(registry):
    scores = np.linspace(0.0, 1.0, 101).tolist()
    ingest_batch(registry, _batch("dev-1", "1", scores))
    [summary] = fleet_summary(registry)
    assert summary.score_quantiles == pytest.approx((0.1, 0.5, 0.9))


def test_a_version_seeing_shifted_inputs_shows_lower_scores(registry):
    rng = np.random.default_rng(0)
    ingest_batch(registry, _batch("dev-1", "1", rng.uniform(0.8, 1.0, 200).tolist()))
    ingest_batch(registry, _batch("dev-2", "2", rng.uniform(0.4, 1.0, 200).tolist()))
    clean, shifted = fleet_summary(registry)
    assert clean.score_quantiles is not None and shifted.score_quantiles is not None
    assert shifted.score_quantiles[0] < 0.5 < 0.8 < clean.score_quantiles[0]


def test_unscored_requests_are_left_out_and_none_scored_gives_no_quantiles(registry):
    ingest_batch(registry, _batch("dev-1", "1", [None, None]))
    ingest_batch(registry, _batch("dev-2", "2", [None, 0.3, 0.3]))
    unscored, scored = fleet_summary(registry)
    assert unscored.score_quantiles is None
    assert scored.score_quantiles == pytest.approx((0.3, 0.3, 0.3))
