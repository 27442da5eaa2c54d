"""Checks an infer request against a model signature before any runtime sees it.

Both tiers validate with this one function, so the edge agent and the gateway refuse
the same inputs with the same messages.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from edgeserve.wire.errors import InvalidInput
from edgeserve.wire.model_card import TensorSpec
from edgeserve.wire.tensors import InferTensor


def validate_inputs(
    model: str, signature: list[TensorSpec], inputs: list[InferTensor], max_batch: int
) -> dict[str, npt.NDArray[Any]]:
    """The request's arrays, keyed by input name, once each passed every check."""
    given = {tensor.name: tensor for tensor in inputs}
    if len(given) != len(inputs):
        raise InvalidInput("the same input name appears twice")
    expected = {spec.name for spec in signature}
    unknown = sorted(set(given) - expected)
    if unknown:
        raise InvalidInput(
            f"model '{model}' has no input {unknown[0]!r} (inputs: {sorted(expected)})"
        )
    arrays: dict[str, npt.NDArray[Any]] = {}
    for spec in signature:
        tensor = given.get(spec.name)
        if tensor is None:
            raise InvalidInput(f"model '{model}' needs input '{spec.name}'")
        arrays[spec.name] = _checked(spec, tensor, max_batch)
    return arrays


def _checked(spec: TensorSpec, tensor: InferTensor, max_batch: int) -> npt.NDArray[Any]:
    if tensor.datatype != spec.datatype:
        raise InvalidInput(f"input '{spec.name}' must be {spec.datatype}, got {tensor.datatype}")
    shape = list(tensor.data.shape)
    if len(shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
    ):
        raise InvalidInput(f"input '{spec.name}' must have shape {spec.shape}, got {shape}")
    if spec.shape and spec.shape[0] == -1 and shape[0] > max_batch:
        raise InvalidInput(f"input '{spec.name}': batch {shape[0]} exceeds max {max_batch}")
    if shape and 0 in shape:
        raise InvalidInput(f"input '{spec.name}' is empty")
    array = tensor.data
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"input '{spec.name}' contains NaN or infinity")
    return array
