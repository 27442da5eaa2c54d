"""The interface every gateway backend implements, and the checks they share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy.typing as npt

from cloud_gateway.repository.config import ModelConfig
from edgeserve.wire.errors import InvalidInput

Arrays = dict[str, npt.NDArray[Any]]


class Backend(Protocol):
    """One loaded model version on one device.

    ``run`` is called from the gateway's thread pool, up to ``config.instances`` calls at
    once, so every implementation is thread-safe (by the library's own guarantee, a lock,
    or a pool of execution contexts). It takes every input named in the config and
    returns every output named in the config, batch axis included. ``close`` is called
    once, after in-flight runs have drained; a later ``run`` raises ``Unavailable``.
    """

    name: str
    device: str
    """Where it runs: ``"cpu"`` or ``"cuda:0"``."""
    providers: list[str]
    """What actually runs the model (execution providers, engine kind), for logs/metrics."""
    memory_bytes: int
    """Memory this version holds: the configured estimate, a measurement, or 2x the file."""

    def run(self, inputs: Arrays) -> Arrays: ...

    def close(self) -> None: ...


def estimate_memory(config: ModelConfig, artifact: Path, measured: int | None = None) -> int:
    """``config.memory_estimate_bytes`` if set, else a positive measurement, else 2x the file.

    Twice the file size covers the weights plus a typical activation/arena overhead.
    """
    if config.memory_estimate_bytes is not None:
        return config.memory_estimate_bytes
    if measured is not None and measured > 0:
        return measured
    return 2 * artifact.stat().st_size


def check_names(expected: Iterable[str], inputs: Arrays, model: str) -> None:
    """Reject unknown and missing input names, naming both sets in the message."""
    wanted = set(expected)
    unknown = sorted(set(inputs) - wanted)
    if unknown:
        raise InvalidInput(f"model '{model}' has no input {unknown}; inputs: {sorted(wanted)}")
    missing = sorted(wanted - set(inputs))
    if missing:
        raise InvalidInput(f"model '{model}' needs input {missing}")


def check_shape(name: str, declared: Sequence[Any], actual: tuple[int, ...]) -> None:
    """Rank and fixed axes must match; an axis declared as -1, None or a name is dynamic."""
    if len(declared) != len(actual):
        raise InvalidInput(
            f"input '{name}' has shape {list(actual)}, the model expects {list(declared)}"
        )
    for want, got in zip(declared, actual, strict=True):
        if isinstance(want, int) and want >= 0 and want != got:
            raise InvalidInput(
                f"input '{name}' has shape {list(actual)}, the model expects {list(declared)}"
            )
