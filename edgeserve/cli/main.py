"""Entry point: ``edgeserve demo | agent | gateway | sync | fleet | models | bench | eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgeserve.cli import enroll
from edgeserve.cli.bench import bench_app
from edgeserve.cli.fleet import fleet_app
from edgeserve.cli.gateway import gateway_app
from edgeserve.cli.sync_cmd import sync_app

# Locals stay out of tracebacks: they can hold keys and passwords.
app = typer.Typer(
    no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_show_locals=False
)
agent_app = typer.Typer(no_args_is_help=True, help="The edge agent (device daemon).")
models_app = typer.Typer(no_args_is_help=True, help="The reference-model pipeline.")
app.add_typer(agent_app, name="agent")
app.add_typer(models_app, name="models")
app.add_typer(bench_app, name="bench")
app.add_typer(gateway_app, name="gateway")
app.add_typer(sync_app, name="sync")
app.add_typer(fleet_app, name="fleet")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluations on the real system.")
app.add_typer(eval_app, name="eval")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file", exists=True)
]
PortFileOption = Annotated[
    Path | None, typer.Option(help="write the bound port here once ready (for supervisors)")
]


@app.command()
def demo(
    requests: Annotated[int, typer.Option(help="test digits to send (0 = all)")] = 0,
) -> None:
    """Run the whole system on this machine and show each capability as it lands."""
    from edgeserve.cli.demo import run_demo

    raise typer.Exit(run_demo(requests))


@agent_app.command("run")
def agent_run(config: ConfigOption = None, port_file: PortFileOption = None) -> None:
    """Run the edge agent in the foreground (what the systemd unit starts)."""
    from edge_agent.config import AgentConfig
    from edge_agent.server import run_agent
    from edgeserve.settings import load_settings

    overrides = {"port_file": port_file} if port_file else {}
    run_agent(load_settings(AgentConfig, config, **overrides))


agent_app.command("enroll-request")(enroll.enroll_request)
agent_app.command("enroll-accept")(enroll.enroll_accept)
fleet_app.command("enroll")(enroll.fleet_enroll)


@models_app.command("build")
def models_build(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("models/artifacts"),
    seed: int = 0,
) -> None:
    """Train, export, quantize and convert the reference models, deterministically."""
    from edgeserve.cli.models import build

    build(out, seed)


@models_app.command("list")
def models_list(
    folder: Annotated[Path | None, typer.Option(help="artifacts folder")] = None,
) -> None:
    """Show the model cards of an artifacts folder (default: the packaged ones)."""
    from edgeserve.cli.models import list_cards

    list_cards(folder)


@models_app.command("distill")
def models_distill(
    registry: Annotated[Path, typer.Option(help="the sync service's registry.db")],
    out: Annotated[Path, typer.Option(help="output folder")] = Path("distilled"),
    version: Annotated[str, typer.Option(help="the new version")] = "2",
    epochs: Annotated[int, typer.Option(help="passes over the training set")] = 12,
    keep_bank: Annotated[
        bool, typer.Option(help="keep the served trust bank (updates cannot ship a new one yet)")
    ] = False,
    shuffle_labels: Annotated[
        bool, typer.Option(help="train a deliberately worse model (for testing the gate)")
    ] = False,
) -> None:
    """Retrain the edge model from the fleet's hard examples, the cloud model as teacher."""
    from edgeserve.cli.models import distill

    raise typer.Exit(distill(registry, out, version, epochs, keep_bank, shuffle_labels))


@eval_app.command("cascade")
def eval_cascade(
    out: Annotated[Path, typer.Option(help="folder for CSV, JSON and plots")] = Path(
        "docs/eval/cascade"
    ),
    budget_ms: Annotated[float, typer.Option(help="per-request latency budget")] = 250.0,
    seeds: Annotated[
        str | None,
        typer.Option(help="rebuild with these seeds (e.g. 1-30) and score the router offline"),
    ] = None,
) -> None:
    """Edge-only vs cloud-only vs cascade accuracy, escalation rate and latency, with a sweep."""
    if seeds is not None:
        from edgeserve.cli.eval_seeds import eval_seeds

        eval_seeds(seeds, out / "seeds")
        return
    from edgeserve.eval.cascade import run_cascade_eval

    run_cascade_eval(out, budget_ms)


@eval_app.command("learning-loop")
def eval_learning_loop(
    out: Annotated[Path, typer.Option(help="folder for the JSON")] = Path(
        "docs/eval/learning_loop"
    ),
    epochs: Annotated[int, typer.Option(help="distillation epochs")] = 12,
    margin_agreement: Annotated[
        float, typer.Option(help="how much lower agreement still counts as not worse")
    ] = 0.10,
) -> None:
    """One turn of the learning loop on a real fleet: hard examples, distillation, gated
    rollouts of the new version and of a deliberately worse one."""
    from edgeserve.cli.eval_learning import eval_learning_loop as run
    from edgeserve.eval.learning_loop import LoopSettings

    settings = LoopSettings(epochs=epochs, margin_agreement=margin_agreement)
    raise typer.Exit(run(out, settings))


@eval_app.command("rate-hold")
def eval_rate_hold(
    out: Annotated[Path, typer.Option(help="folder for the JSON")] = Path("docs/eval/rate_hold"),
    stream_seeds: Annotated[int, typer.Option(help="resampled streams per case")] = 5,
) -> None:
    """Whether the device holds 5/10/20% escalation on clean, noisy and blurred digits."""
    from edgeserve.cli.eval_rate import eval_rate_hold as run

    run(out, stream_seeds)


@models_app.command("calibrate")
def models_calibrate(
    folder: Annotated[Path | None, typer.Option(help="artifacts folder")] = None,
    model: str = "digits-edge",
    cloud_model: str = "digits-cloud",
    score: Annotated[str, typer.Option(help="max_probability | margin | entropy | trust")] = (
        "max_probability"
    ),
    target: Annotated[str, typer.Option(help="escalation_rate | accuracy")] = "escalation_rate",
    value: Annotated[float, typer.Option(help="the target's value, e.g. 0.1 or 0.985")] = 0.1,
) -> None:
    """Fit the temperature and pick the router threshold on the calibration split."""
    from edgeserve.artifacts import packaged_artifacts
    from edgeserve.cli.calibrate import calibrate

    calibrate(folder or packaged_artifacts(), model, cloud_model, score, target, value)  # type: ignore[arg-type]


def main() -> None:
    from rich.markup import escape  # messages carry [extras] that are not markup

    from edgeserve.extras import MissingExtra
    from edgeserve.listen import CannotListen
    from edgeserve.settings import ConfigError

    try:
        app()
    except (CannotListen, MissingExtra, ConfigError) as exc:
        # the operator's to fix: one line, no traceback
        Console(stderr=True, soft_wrap=True).print(
            f"[bold red]error:[/] {escape(exc.message)}", highlight=False
        )
        raise SystemExit(1) from None
