"""``edgeserve models calibrate``: fit an edge card's temperature and router threshold.

Everything is fitted on the calibration split; the test-split rows are printed for
information only and never feed back into the card.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeserve.wire.model_card import ModelCard, RouterScore
from models.calibrate import CascadeOutcome, TargetKind, calibrate_card, cascade_outcome


def calibrate(
    artifacts_dir: Path,
    model: str = "digits-edge",
    cloud_model: str = "digits-cloud",
    score: RouterScore = "max_probability",
    target_kind: TargetKind = "escalation_rate",
    target_value: float = 0.1,
) -> ModelCard:
    """Calibrate ``model``'s card in ``artifacts_dir``, save it and print what changed."""
    card = calibrate_card(artifacts_dir, model, cloud_model, score, target_kind, target_value)
    test = cascade_outcome(artifacts_dir, card, cloud_model, "test")
    Console().print(calibration_table(card, test))
    return card


def calibration_table(card: ModelCard, test: CascadeOutcome) -> Table:
    """The card's calibration and router policy, with the same policy on the test split."""
    report, router = card.calibration, card.router
    if report is None or router is None:
        raise ValueError(f"model '{card.name}' is not calibrated")
    target = f"{router.target_kind} {router.target_value}"
    table = Table(title=f"{card.name}: {router.score} < {router.threshold:.6g} escalates")
    table.add_column("", no_wrap=True)
    table.add_column(f"calibration ({report.samples})", justify="right")
    table.add_column(f"test ({test.samples})", justify="right")
    table.caption = "the test column is for information only"
    rows = [
        ("target", target, ""),
        ("temperature", f"{report.temperature:.4f}", ""),
        ("ECE before / after", _pair(report.ece_before, report.ece_after), _pair(*test.ece)),
        ("NLL before / after", _pair(report.nll_before, report.nll_after), ""),
        ("escalation rate", _percent(router.expected_escalation_rate), _percent(test.rate)),
        ("cascade accuracy", _percent(router.expected_accuracy), _percent(test.accuracy)),
        ("edge-only accuracy", "", _percent(test.edge_accuracy)),
        (f"{router.escalation_model}-only accuracy", "", _percent(test.cloud_accuracy)),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def _pair(before: float, after: float) -> str:
    return f"{before:.4f} / {after:.4f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"
