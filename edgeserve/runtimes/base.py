"""The interface every local runtime implements, whatever library runs the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy.typing as npt

Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """Knobs shared by all runtimes; each maps them onto its own session options."""

    threads: int = 1


class RuntimeSession(Protocol):
    """A loaded model ready to run; ``run`` may be called from several threads."""

    runtime_name: str

    def run(self, inputs: Arrays, output_names: list[str]) -> Arrays: ...

    def close(self) -> None: ...
