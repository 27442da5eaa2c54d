"""``edgeserve gateway experiment ...``: plain functions the Typer app wires up; each
returns an exit code. They read and write the experiments database directly (like the
tenant commands); running gateways pick changes up within a flush interval."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cloud_gateway.experiments.decide import verdicts
from cloud_gateway.experiments.spec import Arm, ExperimentSpec, Settings
from cloud_gateway.experiments.store import Experiment, ExperimentStore
from cloud_gateway.experiments.tally import Tally
from cloud_gateway.repository.manager import ModelRepository
from edgeserve.stats import Comparison, Proportion
from edgeserve.wire.errors import EdgeServeError, InvalidInput


def parse_split(text: str) -> tuple[Arm, ...]:
    """``"1=90,2=10"`` -> split arms, the first being the control."""
    arms: list[Arm] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        version, _, weight = part.partition("=")
        try:
            arms.append(Arm(version.strip(), "split", float(weight)))
        except ValueError:
            raise InvalidInput(f"--split wants VERSION=WEIGHT,..., got {part!r}") from None
    return tuple(arms)


def check_versions(repository: Path, spec: ExperimentSpec) -> None:
    """Every arm's version must be one the model's version policy serves."""
    with ThreadPoolExecutor(1) as unused:
        entry = ModelRepository(repository, 1 << 30, unused).entry(spec.model)
    missing = [arm.version for arm in spec.arms if arm.version not in entry.versions]
    if missing:
        raise InvalidInput(
            f"model {spec.model!r} serves versions {entry.versions}, not {missing}: add the"
            " version folders and widen its [version_policy] (e.g. latest = 3) in config.toml"
        )


def experiment_create(
    db: Path, repository: Path, spec: ExperimentSpec, *, console: Console | None = None
) -> int:
    out = console or Console()
    try:
        check_versions(repository, spec)
        with ExperimentStore(db) as store:
            store.create(spec)
    except EdgeServeError as exc:
        return _failed(out, exc)
    arms = ", ".join(f"{a.name} ({a.weight:g})" if a.role == "split" else a.name for a in spec.arms)
    key = "none (each request drawn at random)"
    if spec.key_header is not None:
        key = f"header {spec.key_header}"
    elif spec.key_parameter is not None:
        key = f"parameter {spec.key_parameter}"
    out.print(f"experiment [bold]{spec.name}[/] on model {spec.model}: {arms}")
    out.print(
        f"sticky key: {key or 'none (each request drawn at random)'}; control: {spec.control.name}"
    )
    out.print(
        "[dim]running gateways that read this experiments database pick it up within a second[/]"
    )
    return 0


def experiment_stop(db: Path, name: str, *, console: Console | None = None) -> int:
    out = console or Console()
    try:
        with ExperimentStore(db) as store:
            stopped = store.stop(name, "stopped by an operator")
    except EdgeServeError as exc:
        return _failed(out, exc)
    state = "stopped" if stopped else "was already stopped"
    out.print(
        f"experiment [bold]{name}[/] {state}; its model's unversioned traffic goes to the"
        " version its [version_policy] serves by default (the newest)"
    )
    return 0


def experiment_show(db: Path, name: str | None, *, console: Console | None = None) -> int:
    out = console or Console()
    try:
        with ExperimentStore(db) as store:
            if name is None:
                _list(out, store.all())
                return 0
            experiment = store.get(name)
            totals = store.totals(name)
    except EdgeServeError as exc:
        return _failed(out, exc)
    show_experiment(out, experiment, totals)
    return 0


def show_experiment(out: Console, experiment: Experiment, totals: dict[str, Tally]) -> None:
    """Two tables: each arm's own figures (95% Wilson intervals), then each candidate
    against the control (always-valid intervals of the difference, and the verdict)."""
    spec = experiment.spec
    status = experiment.status + (f": {experiment.reason}" if experiment.reason else "")
    arms = Table(title=f"experiment {spec.name} on {spec.model} ({status})")
    for column in ("arm", "share", "requests", "errors", "p50/p99 ms", "agreement", "accuracy"):
        arms.add_column(column, justify="left" if column == "arm" else "right")
    for arm in spec.arms:
        tally = totals.get(arm.version, Tally())
        latency = [tally.latency.quantile(q) for q in (0.5, 0.99)]
        arms.add_row(
            arm.name + (" control" if arm is spec.control else ""),
            f"{arm.weight:g}" if arm.role == "split" else "mirror",
            f"{tally.requests:,}" + (f"\n{tally.dropped:,} dropped" if tally.dropped else ""),
            _rate(tally.error_rate),
            "/".join("-" if v is None else f"{v * 1e3:.1f}" for v in latency),
            _rate(tally.agreement),
            _rate(tally.accuracy),
        )
    out.print(arms)
    versus = Table("arm", "metric", "+ is better", "always-valid 95%", "verdict", "state",
                   title="candidates against the control")  # fmt: skip
    for arm in spec.arms[1:]:
        for metric, comparison in _comparisons(spec, arm, totals):
            state = "stopped" if arm.stopped else "running"
            versus.add_row(arm.name, metric, *_comparison(comparison), state)
    out.print(versus)
    for arm in spec.arms:
        if arm.stopped:
            out.print(f"arm {arm.name} stopped: {arm.stopped}", highlight=False)


def settings_from(
    max_error_rate: float | None,
    max_p99_ms: float | None,
    min_requests: int,
    min_agreement: float,
    alpha: float,
    shadow_queue: int,
    shadow_fraction: float,
    feedback: bool,
) -> Settings:
    from edgeserve.stats import Guardrails

    rails = Guardrails(
        max_error_rate, None if max_p99_ms is None else max_p99_ms / 1e3, min_requests
    )
    return Settings(
        guardrails=rails,
        min_agreement=min_agreement,
        alpha=alpha,
        shadow_queue=shadow_queue,
        shadow_fraction=shadow_fraction,
        feedback=feedback,
    )


def _comparisons(
    spec: ExperimentSpec, arm: Arm, totals: dict[str, Tally]
) -> list[tuple[str, Comparison]]:
    found = verdicts(spec, arm, totals)
    named = [
        ("error rate", found.errors),
        ("accuracy", found.accuracy),
        (f"agreement vs {spec.settings.min_agreement:.0%}", found.agreement),
    ]
    return [(name, c) for name, c in named if c is not None and c.difference is not None]


def _comparison(comparison: Comparison) -> tuple[str, str, str]:
    """(difference, interval, verdict); the interval is clipped to what a rate allows."""
    assert comparison.difference is not None
    interval = "n too small"
    if comparison.low is not None and comparison.high is not None:
        low, high = max(-1.0, comparison.low), min(1.0, comparison.high)
        interval = f"[{low:+.1%}, {high:+.1%}]"
    difference = comparison.difference or 0.0  # no "-0.00%"
    return f"{difference:+.2%}", interval, comparison.verdict.value


def _rate(counts: Proportion) -> str:
    interval = counts.interval()
    if counts.rate is None or interval is None:
        return "-"
    return f"{counts.rate:.1%}\n[{interval[0]:.1%}, {interval[1]:.1%}]\nn={counts.trials:,}"


def _list(out: Console, experiments: list[Experiment]) -> None:
    table = Table("experiment", "model", "arms", "status", title="experiments")
    for experiment in experiments:
        spec = experiment.spec
        table.add_row(
            spec.name,
            spec.model,
            ", ".join(arm.name for arm in spec.arms),
            experiment.status + (f" ({experiment.reason})" if experiment.reason else ""),
        )
    out.print(table)


def _failed(out: Console, exc: EdgeServeError) -> int:
    out.print(f"[red]error:[/] {exc.message}", highlight=False)
    return 1
