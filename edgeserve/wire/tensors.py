"""Open Inference Protocol v2 request/response types, independent of any transport.

Every front door (the agent's REST API, the gateway's REST and gRPC servers) converts
its wire form into these types and back, so the cores only ever see numpy arrays with a
name, an OIP datatype and a shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeserve.wire.errors import InvalidInput, shown

Parameters = dict[str, Any]

# Triton refuses tensors of more than 64 dimensions, and numpy cannot build them.
MAX_TENSOR_DIMS = 64
# A bound on the product of a shape's non-zero dimensions: the element count of a tensor,
# and what numpy multiplies (times the item size, in 64 bits) even for an empty one, so a
# shape like [0, 2**63 - 1] is refused here rather than overflowing inside numpy.
MAX_TENSOR_ELEMENTS = 2**31 - 1

# OIP v2 datatype name -> numpy dtype (little-endian, as the binary extension requires).
DATATYPE_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
_NUMPY_KIND_TO_DATATYPE: dict[tuple[str, int], str] = {
    (dt.kind, dt.itemsize): name for name, dt in DATATYPE_TO_NUMPY.items() if name != "BYTES"
}


def datatype_of(array: npt.NDArray[Any]) -> str:
    """The OIP datatype name for a numpy array."""
    if array.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _NUMPY_KIND_TO_DATATYPE[(array.dtype.kind, array.dtype.itemsize)]
    except KeyError:
        raise InvalidInput(f"numpy dtype {array.dtype} has no OIP v2 datatype") from None


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    try:
        return DATATYPE_TO_NUMPY[datatype]
    except (KeyError, TypeError):
        raise InvalidInput(f"unsupported datatype '{shown(datatype)}'") from None


def element_count(shape: Sequence[Any], tensor: str) -> int:
    """The number of elements of ``shape``, checked with Python ints before numpy sees it.

    Every dimension must be a non-negative integer, there may be at most
    ``MAX_TENSOR_DIMS`` of them, and their non-zero product at most
    ``MAX_TENSOR_ELEMENTS``.
    """
    if len(shape) > MAX_TENSOR_DIMS:
        raise InvalidInput(
            f"tensor '{shown(tensor)}': shape has {len(shape)} dimensions, "
            f"at most {MAX_TENSOR_DIMS} are allowed"
        )
    if any(not isinstance(dim, int) or isinstance(dim, bool) or dim < 0 for dim in shape):
        raise InvalidInput(
            f"tensor '{shown(tensor)}': shape {shown(list(shape))} must be non-negative integers"
        )
    if prod(max(dim, 1) for dim in shape) > MAX_TENSOR_ELEMENTS:
        raise InvalidInput(
            f"tensor '{shown(tensor)}': shape {shown(list(shape))} is too large; its non-zero "
            f"dimensions multiply past {MAX_TENSOR_ELEMENTS}"
        )
    return prod(shape)


@dataclass(slots=True)
class InferTensor:
    """A named tensor; ``data`` is always a numpy array of ``datatype`` and ``shape``."""

    name: str
    datatype: str
    shape: list[int]
    data: npt.NDArray[Any]
    parameters: Parameters = field(default_factory=dict)

    @classmethod
    def from_numpy(cls, name: str, array: npt.NDArray[Any]) -> InferTensor:
        return cls(name, datatype_of(array), list(array.shape), array)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model_name: str
    inputs: list[InferTensor]
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    outputs: list[RequestedOutput] = field(default_factory=list)

    def as_arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {tensor.name: tensor.data for tensor in self.inputs}


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[InferTensor]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)

    def output(self, name: str) -> InferTensor:
        for tensor in self.outputs:
            if tensor.name == name:
                return tensor
        raise KeyError(name)
