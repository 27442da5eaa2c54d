"""``edgeserve models``: build the reference artifacts and show their cards."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgeserve.wire.model_card import CARD_SUFFIX, ModelCard

EDGE_MODELS = ("digits-edge", "digits-edge-fp32", "digits-edge-tflite")


def build(out: Path, seed: int) -> None:
    from models.build import build_all
    from models.calibrate import calibrate_card

    out.mkdir(parents=True, exist_ok=True)
    with Progress(transient=True) as progress:
        task = progress.add_task("building reference models", total=None)

        def report(step: str) -> None:
            progress.update(task, description=step)

        cards = build_all(out, seed=seed, progress=report)
        # The router's temperature and threshold are part of a card: refit them on the
        # calibration split of what was just built, with the committed default policy.
        for name in EDGE_MODELS:
            report(f"calibrating {name}")
            calibrate_card(out, name, "digits-cloud", "trust", "escalation_rate", 0.1)
    cards = [ModelCard.load(path) for path in sorted(out.glob(f"*{CARD_SUFFIX}"))]
    Console().print(cards_table(cards, f"built into {out}"))


def list_cards(folder: Path | None) -> None:
    from edgeserve.artifacts import packaged_artifacts

    folder = folder or packaged_artifacts()
    cards = [ModelCard.load(path) for path in sorted(folder.glob(f"*{CARD_SUFFIX}"))]
    Console().print(cards_table(cards, str(folder)))


def cards_table(cards: list[ModelCard], title: str) -> Table:
    table = Table(title=title)
    for column in ("model", "version", "format", "precision", "params", "size", "test acc"):
        left = column == "model"
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    for card in cards:
        accuracy = f"{card.metrics.test_accuracy:.2%}" if card.metrics else "-"
        table.add_row(
            card.name,
            card.version,
            card.format,
            card.precision,
            f"{card.parameters:,}",
            f"{card.size_bytes / 1024:.1f} KiB",
            accuracy,
        )
    return table


def distill(
    registry_path: Path,
    out: Path,
    version: str,
    epochs: int,
    keep_bank: bool,
    shuffle_labels: bool,
) -> int:
    """``models distill``: a new edge version from the fleet's hard examples; exit code."""
    from models.distill import DistillConfig, distill_edge_version
    from sync.ingest import hard_examples
    from sync.registry import Registry

    console = Console()
    if not registry_path.is_file():
        console.print(f"[red]error:[/red] no sync registry at {registry_path}")
        return 1
    registry = Registry(registry_path)
    try:
        found = hard_examples(registry, "digits-edge", "input")
    finally:
        registry.close()
    if len(found.x) == 0:
        console.print("[red]error:[/red] the fleet has uploaded no hard examples of digits-edge")
        return 1
    config = DistillConfig(epochs=epochs, shuffle_labels=shuffle_labels, rebuild_bank=not keep_bank)
    with console.status(f"distilling from {len(found.x)} hard examples"):
        result = distill_edge_version(out, found.x, version, config)
    console.print(cards_table([result.card], f"distilled into {out}"))
    console.print(
        f"{result.hard_examples} hard examples ({found.skipped} malformed skipped); the"
        f" served edge model agreed with the cloud on {result.hard_label_agreement:.1%} of them"
    )
    console.print(
        f"push it: edgeserve fleet push {result.artifact} --model digits-edge"
        f" --version {version} --card {out / 'digits-edge.card.json'} --gate sequential"
    )
    return 0
