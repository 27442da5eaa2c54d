"""edgeserve.stats: proportions, the always-valid sequential test, latency, guardrails."""

from __future__ import annotations

import numpy as np
import pytest

from edgeserve.stats import (
    Guardrails,
    LatencyHistogram,
    Proportion,
    Verdict,
    compare_proportions,
    compare_to_rate,
    wilson_interval,
)


def test_wilson_interval_of_no_errors_is_not_a_point_at_zero():
    low, high = wilson_interval(0, 50)
    assert low == 0.0
    assert 0.05 < high < 0.1


def test_wilson_interval_contains_the_rate_and_narrows_with_trials():
    narrow = wilson_interval(900, 1000)
    wide = wilson_interval(90, 100)
    assert narrow[0] < 0.9 < narrow[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_a_proportion_refuses_more_successes_than_trials():
    with pytest.raises(ValueError, match="successes <= trials"):
        Proportion(5, 3)


def test_too_few_trials_are_undecided_whatever_the_rates():
    comparison = compare_proportions(Proportion(50, 50), Proportion(0, 50))
    assert comparison.verdict is Verdict.UNDECIDED
    assert comparison.difference == -1.0


def test_a_clear_drop_is_worse_with_an_interval_below_zero():
    comparison = compare_proportions(Proportion(9000, 10000), Proportion(8700, 10000))
    assert comparison.verdict is Verdict.WORSE
    assert comparison.high < 0 < comparison.p_value < 0.05


def test_for_error_rates_a_rise_is_worse():
    comparison = compare_proportions(
        Proportion(100, 10000), Proportion(300, 10000), higher_is_better=False
    )
    assert comparison.verdict is Verdict.WORSE


def test_equal_rates_are_undecided_without_a_margin_and_not_worse_with_one():
    control, candidate = Proportion(9000, 10000), Proportion(9000, 10000)
    assert compare_proportions(control, candidate).verdict is Verdict.UNDECIDED
    assert compare_proportions(control, candidate, margin=0.03).verdict is Verdict.NOT_WORSE


def test_a_clear_rise_is_better():
    comparison = compare_proportions(Proportion(8500, 10000), Proportion(9000, 10000))
    assert comparison.verdict is Verdict.BETTER
    assert comparison.low > 0


def test_agreement_against_a_required_rate():
    assert compare_to_rate(Proportion(900, 1000), 0.99).verdict is Verdict.WORSE
    assert compare_to_rate(Proportion(1000, 1000), 0.95).verdict is Verdict.BETTER


def test_checking_after_every_batch_keeps_false_stops_under_alpha():
    rng = np.random.default_rng(7)
    runs = 200

    def stops(a: np.ndarray, b: np.ndarray) -> bool:
        for look, (x, y) in enumerate(zip(a, b, strict=True)):
            trials = 100 * (look + 1)
            verdict = compare_proportions(Proportion(x, trials), Proportion(y, trials)).verdict
            if verdict is not Verdict.UNDECIDED:
                return True
        return False

    stopped = sum(
        stops(
            rng.binomial(100, 0.9, 40).cumsum().tolist(),
            rng.binomial(100, 0.9, 40).cumsum().tolist(),
        )
        for _ in range(runs)
    )
    assert stopped / runs <= 0.05


def test_latency_quantile_is_within_a_bucket_and_never_understated():
    histogram = LatencyHistogram()
    for ms in range(1, 101):
        histogram.observe(ms / 1e3)
    p99 = histogram.quantile(0.99)
    assert 0.099 <= p99 <= 0.099 * 1.1
    assert histogram.quantile(0.5) >= 0.050


def test_latency_histograms_add_up():
    a, b = LatencyHistogram(), LatencyHistogram()
    a.observe(0.001)
    b.observe(0.5)
    a.merge(b)
    assert a.total == 2
    assert a.quantile(1.0) >= 0.5


def test_an_empty_histogram_has_no_quantile():
    assert LatencyHistogram().quantile(0.99) is None


def test_guardrails_wait_for_min_requests_then_stop_on_errors():
    rails = Guardrails(max_error_rate=0.05, min_requests=50)
    assert rails.breached(10, 10, LatencyHistogram()) is None
    reason = rails.breached(100, 10, LatencyHistogram())
    assert reason is not None and "error rate 10.0%" in reason


def test_guardrails_stop_on_a_slow_tail():
    histogram = LatencyHistogram()
    for _ in range(60):
        histogram.observe(0.2)
    reason = Guardrails(max_p99_s=0.05, min_requests=50).breached(60, 0, histogram)
    assert reason is not None and "p99" in reason
