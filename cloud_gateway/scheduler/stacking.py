"""Rows in, rows out: the numpy side of batching, free of asyncio so it runs on a worker.

A request's inputs carry its rows on axis 0. Requests whose inputs share names, dtypes
and trailing shapes (one ``ShapeKey``) can be concatenated into one batch; the model's
outputs are then cut back along axis 0 by the same row counts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeserve.wire.errors import InternalError, InvalidInput

Tensors = dict[str, npt.NDArray[Any]]
Execute = Callable[[Tensors], Tensors]
ShapeKey = tuple[tuple[str, str, tuple[int, ...]], ...]


def describe(inputs: Tensors, max_batch_size: int) -> tuple[int, ShapeKey]:
    """Rows of a request and the key that says which other requests it can batch with."""
    if not inputs:
        raise InvalidInput("a request needs at least one input tensor")
    row_counts = {name: array.shape[0] if array.ndim else 0 for name, array in inputs.items()}
    rows = next(iter(row_counts.values()))
    if rows < 1 or any(count != rows for count in row_counts.values()):
        raise InvalidInput(f"every input needs the same non-zero batch axis 0, got {row_counts}")
    if rows > max_batch_size:
        raise InvalidInput(f"request has {rows} rows, more than max_batch_size {max_batch_size}")
    key = tuple(
        sorted((name, array.dtype.str, tuple(array.shape[1:])) for name, array in inputs.items())
    )
    return rows, key


def execute_batch(execute: Execute, inputs: list[Tensors]) -> list[Tensors]:
    """Runs on a worker thread: concatenating large inputs would also stall the loop."""
    if len(inputs) == 1:
        batch = inputs[0]
    else:
        batch = {name: np.concatenate([i[name] for i in inputs], axis=0) for name in inputs[0]}
    rows = [next(iter(i.values())).shape[0] for i in inputs]
    return split_rows(execute(batch), rows)


def split_rows(outputs: Tensors, rows: list[int]) -> list[Tensors]:
    total = sum(rows)
    bounds = list(itertools.accumulate(rows))[:-1]
    parts: list[Tensors] = [{} for _ in rows]
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.ndim == 0 or array.shape[0] != total:
            raise InternalError(
                f"output {name!r} has shape {array.shape}; expected {total} rows on axis 0"
            )
        for part, piece in zip(parts, np.split(array, bounds, axis=0), strict=True):
            part[name] = piece
    return parts
