"""Golden self-test vectors: what a new model version must answer before a device switches.

At upload the sync service runs the artifact once, with the same runtime the devices use
(``edgeserve.runtimes``: ONNX Runtime on the CPU, TFLite), on seeded random inputs
shaped from the card (a dynamic axis becomes 2 rows), and records the outputs. A device
that rebuilt the artifact from a delta runs the same inputs before the atomic switch; a
mismatch means the bytes are right but the model does not behave as the operator's did.
Tolerances are generous because int8 kernels may round differently across CPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeserve.wire.errors import InvalidInput
from edgeserve.wire.manifest import GoldenTensor, SelfTest
from edgeserve.wire.model_card import ModelCard, TensorSpec

DYNAMIC_ROWS = 2
GOLDEN_SEED = 20240531
TOLERANCE = 1e-3

# OIP v2 datatype → numpy dtype; BYTES has no meaningful random input and is refused.
DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}


def golden_inputs(card: ModelCard, seed: int = GOLDEN_SEED) -> dict[str, npt.NDArray[Any]]:
    """Deterministic inputs for every tensor the card declares."""
    rng = np.random.default_rng(seed)
    return {spec.name: _random_tensor(spec, rng) for spec in card.inputs}


def compute_self_test(card: ModelCard, artifact: Path, seed: int = GOLDEN_SEED) -> SelfTest:
    """Run ``artifact`` on golden inputs with the device runtime; record what it answers."""
    from edgeserve.runtimes import RuntimeOptions, open_session

    inputs = golden_inputs(card, seed)
    session = open_session(card.format, artifact, RuntimeOptions())
    try:
        outputs = session.run(inputs, [spec.name for spec in card.outputs])
    finally:
        session.close()
    return SelfTest(
        inputs=[_golden(spec.name, spec.datatype, array) for spec, array in _pair(card, inputs)],
        expected=[_golden(spec.name, spec.datatype, outputs[spec.name]) for spec in card.outputs],
        atol=TOLERANCE,
        rtol=TOLERANCE,
    )


def _random_tensor(spec: TensorSpec, rng: np.random.Generator) -> npt.NDArray[Any]:
    try:
        dtype = np.dtype(DTYPES[spec.datatype])
    except KeyError:
        raise InvalidInput(
            f"input {spec.name!r} has datatype {spec.datatype}, which golden tests cannot generate"
        ) from None
    shape = tuple(DYNAMIC_ROWS if dim < 0 else dim for dim in spec.shape)
    if dtype.kind == "f":
        # [0, 1) covers the reference models' normalised inputs without saturating them.
        return rng.random(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    # Small non-negative integers: valid as token ids or class indices for most models.
    return rng.integers(0, 10, shape).astype(dtype)


def _pair(
    card: ModelCard, inputs: dict[str, npt.NDArray[Any]]
) -> list[tuple[TensorSpec, npt.NDArray[Any]]]:
    return [(spec, inputs[spec.name]) for spec in card.inputs]


def _golden(name: str, datatype: str, array: npt.NDArray[Any]) -> GoldenTensor:
    flat = np.asarray(array).reshape(-1)
    data: list[float] | list[int]
    if flat.dtype.kind == "f":
        data = [float(value) for value in flat]
    else:
        data = [int(value) for value in flat]
    return GoldenTensor(name=name, datatype=datatype, shape=list(array.shape), data=data)
