"""``eval cascade --seeds``: every seed rebuilds the models and scores the router on them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from edgeserve.eval.seeds import (
    CSV_COLUMNS,
    SCORES,
    bootstrap_interval,
    parse_seeds,
    run_seeded_eval,
)
from models.bank import WEIGHT_GRID


def test_seed_ranges_and_lists_are_parsed_in_order_without_repeats():
    assert parse_seeds("1-3") == [1, 2, 3]
    assert parse_seeds("9-10, 1,3,2-3") == [1, 2, 3, 9, 10]


@pytest.mark.parametrize("text", ["", "a-3", "5-2", "-1"])
def test_a_bad_seed_range_is_refused(text):
    with pytest.raises(ValueError, match="seed range"):
        parse_seeds(text)


def test_the_bootstrap_interval_brackets_the_mean_and_is_a_point_for_equal_values():
    values = np.random.default_rng(0).normal(0.98, 0.005, 30)
    low, high = bootstrap_interval(values)
    assert low < values.mean() < high
    assert bootstrap_interval(np.full(10, 0.5)) == (0.5, 0.5)


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds")
    return run_seeded_eval([1, 2], out), out


@pytest.mark.slow
def test_two_seeds_are_built_scored_and_summarised_per_score(two_seeds):
    summary, out = two_seeds
    assert summary["seeds"] == [1, 2] and set(summary["scores"]) == set(SCORES)
    for row in summary["scores"].values():
        stat = row["accuracy_at_0.10"]
        assert stat["ci95"][0] <= stat["mean"] <= stat["ci95"][1]
        assert row["matches_cloud_at_10"]["of"] == 2
        assert len(row["curve"]) == 31
    assert json.loads((out / "seeds.json").read_text()) == summary
    assert (out / "seeds.png").stat().st_size > 0


@pytest.mark.slow
def test_the_csv_has_one_row_per_seed_and_score(two_seeds):
    _, out = two_seeds
    with (out / "seeds.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert sorted({(row["seed"], row["score"]) for row in rows}) == sorted(
        (str(seed), score) for seed in (1, 2) for score in SCORES
    )


@pytest.mark.slow
def test_each_build_chooses_its_own_trust_weight_from_the_grid(two_seeds):
    summary, _ = two_seeds
    assert len(summary["trust_weights"]) == 2
    assert all(weight in WEIGHT_GRID for weight in summary["trust_weights"])
