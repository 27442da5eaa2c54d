"""Checks inputs against a model signature before any runtime sees them.

Both tiers validate requests with ``validate_inputs``, so the edge agent and the gateway
refuse the same inputs with the same messages; the gateway's backends guard their own
``run`` with ``check_signature``, the same rules without the request-level ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeserve.wire.errors import InvalidInput, shown
from edgeserve.wire.model_card import TensorSpec
from edgeserve.wire.tensors import InferTensor, datatype_of

Arrays = Mapping[str, npt.NDArray[Any]]


def validate_inputs(
    model: str, signature: list[TensorSpec], inputs: list[InferTensor], max_batch: int
) -> dict[str, npt.NDArray[Any]]:
    """The request's arrays, keyed by input name, once each passed every check."""
    arrays = {tensor.name: tensor.data for tensor in inputs}
    if len(arrays) != len(inputs):
        raise InvalidInput("the same input name appears twice")
    check_signature(model, signature, arrays)
    for spec in signature:
        _check_content(spec, arrays[spec.name], max_batch)
    return arrays


def check_signature(model: str, signature: list[TensorSpec], arrays: Arrays) -> None:
    """Names, datatypes and shapes (-1 = any size) of ``arrays`` against ``signature``."""
    expected = {spec.name for spec in signature}
    unknown = sorted(set(arrays) - expected)
    if unknown:
        raise InvalidInput(
            f"model '{shown(model)}' has no input '{shown(unknown[0])}' "
            f"(inputs: {sorted(expected)})"
        )
    for spec in signature:
        array = arrays.get(spec.name)
        if array is None:
            raise InvalidInput(f"model '{shown(model)}' needs input '{spec.name}'")
        datatype = datatype_of(array)
        if datatype != spec.datatype:
            raise InvalidInput(f"input '{spec.name}' must be {spec.datatype}, got {datatype}")
        shape = list(array.shape)
        if len(shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
        ):
            raise InvalidInput(f"input '{spec.name}' must have shape {spec.shape}, got {shape}")


def _check_content(spec: TensorSpec, array: npt.NDArray[Any], max_batch: int) -> None:
    shape = array.shape
    if spec.shape and spec.shape[0] == -1 and shape[0] > max_batch:
        raise InvalidInput(f"input '{spec.name}': batch {shape[0]} exceeds max {max_batch}")
    if 0 in shape:
        raise InvalidInput(f"input '{spec.name}' is empty")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"input '{spec.name}' contains NaN or infinity")
