"""``edgeserve bench ...``: the benchmarks, each printing its figures and writing plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(
    no_args_is_help=True, help="Benchmarks that print their figures, and the report of all."
)

OutOption = Annotated[Path, typer.Option(help="folder for the report, CSV and plots")]


@bench_app.command("edge")
def bench_edge(
    requests: Annotated[int, typer.Option(help="timed requests per measurement")] = 5000,
    out: OutOption = Path("docs/bench/edge"),
    mobilenet: Annotated[bool, typer.Option(help="include the MobileNetV2-sized model")] = True,
) -> None:
    """Edge agent overhead, int8 vs fp32, ONNX Runtime vs TFLite."""
    from edgeserve.bench.edge import run_edge_benchmark

    run_edge_benchmark(requests, out, mobilenet)


@bench_app.command("grpc-doors")
def bench_grpc_doors(
    out: OutOption = Path("docs/bench/grpc-doors"),
    seconds: Annotated[int, typer.Option(help="seconds per run")] = 3,
    rounds: Annotated[int, typer.Option(help="interleaved rounds; medians reported")] = 3,
) -> None:
    """The gateway's gRPC door: grpc.aio vs grpcio's sync server (with and without the hop
    into the event loop the gateway would need), ModelInfer under h2load."""
    from edgeserve.bench.grpc_doors import run_grpc_doors_benchmark

    run_grpc_doors_benchmark(out, seconds, rounds)


@bench_app.command("gateway")
def bench_gateway(
    out: OutOption = Path("docs/bench/gateway"),
    duration: Annotated[float, typer.Option(help="seconds per measurement point")] = 5.0,
    quick: bool = False,
) -> None:
    """Batching vs none, noisy neighbour, per-request overhead, cold load and eviction."""
    from edgeserve.bench.gateway import run_gateway_benchmark

    run_gateway_benchmark(out, duration, quick)


@bench_app.command("peers")
def bench_peers(
    out: OutOption = Path("docs/bench/peers"),
    duration: Annotated[int, typer.Option(min=1, help="seconds per measurement cell")] = 5,
    rounds: Annotated[int, typer.Option(min=1, help="interleaved rounds; medians reported")] = 3,
    quick: Annotated[bool, typer.Option(help="1 round of 2 s, concurrency 1 and 64 only")] = False,
) -> None:
    """The gateway vs naive FastAPI and NVIDIA PyTriton, loaded by wrk and h2load."""
    from edgeserve.bench.peers import ToolMissing, run_peers_benchmark

    try:
        run_peers_benchmark(out, duration, rounds, quick)
    except ToolMissing as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


@bench_app.command("sequential")
def bench_sequential(
    out: OutOption = Path("docs/bench/sequential"),
    experiments: Annotated[int, typer.Option(min=100, help="simulated experiments each")] = 1000,
) -> None:
    """The always-valid sequential test by simulation: A/A false stops, power for a
    2-point drop, median requests against a fixed-horizon test of the same power."""
    from edgeserve.bench.sequential import run_sequential_bench

    run_sequential_bench(out, experiments)


@bench_app.command("shadow")
def bench_shadow(
    out: OutOption = Path("docs/bench/shadow"),
    seconds: Annotated[int, typer.Option(min=1, help="seconds per run")] = 5,
    rounds: Annotated[int, typer.Option(min=1, help="interleaved rounds; medians reported")] = 3,
) -> None:
    """What mirroring every request to a shadow version costs the primary (p50 at c=32)."""
    from edgeserve.bench.shadow import run_shadow_bench

    run_shadow_bench(out, seconds, rounds)


@bench_app.command("delta")
def bench_delta(
    out: OutOption = Path("docs/bench/delta"),
    big: Annotated[bool, typer.Option(help="include the >= 50 MB model")] = True,
) -> None:
    """Model update sizes: tensor-aware delta vs zstd, zstd with the base as prefix, bsdiff4."""
    from edgeserve.bench.delta import run_delta_bench

    run_delta_bench(out, big)


@bench_app.command("external-data")
def bench_external_data(
    repeats: Annotated[int, typer.Option(help="loads per layout (medians)")] = 3,
) -> None:
    """A 100 MB ONNX model as one file vs model.onnx + model.onnx.data: load, RSS, hash."""
    from edgeserve.bench.external_data import run_external_data_bench

    run_external_data_bench(repeats)


@bench_app.command("telemetry")
def bench_telemetry(
    devices: int = 100,
    records: Annotated[int, typer.Option(help="records per device")] = 2000,
    batch: Annotated[int, typer.Option(help="records per batch")] = 500,
) -> None:
    """Telemetry ingest (decode, dedup, store, ack) in records/s, in process."""
    from edgeserve.bench.telemetry import run_ingest_bench

    run_ingest_bench(devices, records, batch)


@bench_app.command("fleet")
def bench_fleet(
    out: OutOption = Path("docs/bench/fleet"),
    sizes: Annotated[str, typer.Option(help="fleet sizes to update, comma separated")] = "1,4,8",
    telemetry_devices: int = 100,
) -> None:
    """Time to update N real agents (delta vs full) and telemetry ingest through Mosquitto."""
    from edgeserve.bench.fleet import run_fleet_bench

    run_fleet_bench(out, tuple(int(n) for n in sizes.split(",")), telemetry_devices)


@bench_app.command("fleet-sim")
def bench_fleet_sim(
    out: OutOption = Path("docs/bench/fleet-sim"),
    devices: Annotated[str, typer.Option(help="fleet sizes, comma separated")] = "100,300,1000",
    records_per_s: Annotated[int, typer.Option(help="telemetry records per device a second")] = 10,
    broker_queue: Annotated[
        int | None, typer.Option(help="Mosquitto max_queued_messages (default: the project's)")
    ] = None,
) -> None:
    """Simulated devices (real wire protocol) against real Mosquitto and the sync service:
    a last-layer rollout of a 51 MB model, a broker kill mid-rollout, telemetry."""
    from edgeserve.bench.fleet_sim import run_fleet_sim

    sizes = tuple(int(n) for n in devices.split(","))
    run_fleet_sim(out, sizes, records_per_s, broker_queue)


@bench_app.command("report")
def bench_report(
    out: OutOption = Path("docs/bench/latest"),
    quick: Annotated[bool, typer.Option(help="small sizes: the whole report in minutes")] = False,
    only: Annotated[
        str | None, typer.Option(help="benchmarks to run, comma separated (default: all)")
    ] = None,
    note: Annotated[
        str | None, typer.Option(help="a line for the report's header (e.g. the box was shared)")
    ] = None,
) -> None:
    """Every benchmark into one folder: report.md with the machine, tables and plots."""
    from edgeserve.bench.report import run_report
    from edgeserve.bench.suite import BENCHMARKS

    names = [name.strip() for name in only.split(",") if name.strip()] if only else None
    unknown = [name for name in names or [] if name not in BENCHMARKS]
    if unknown:
        raise typer.BadParameter(f"unknown {unknown}; choose from {', '.join(BENCHMARKS)}")
    report = run_report(out, quick, names, note)
    failed = [section.name for section in report.sections if section.status == "failed"]
    typer.echo(f"wrote {out / 'report.md'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise typer.Exit(1)
