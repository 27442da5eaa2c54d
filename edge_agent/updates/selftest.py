"""The self-test a staged model must pass before it may serve.

The manifest carries golden inputs and the outputs the operator's copy of the new model
produced for them (computed with this same runtime). The staged artifact is opened with
the runtime its card names, run once on those inputs, and every expected output must
agree within ``atol + rtol * |expected|``. It catches what a hash cannot: an artifact
that is byte-correct but does not load or compute on this device's runtime.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.store import VerifiedModel
from edgeserve.runtimes import RuntimeOptions, open_session
from edgeserve.wire.errors import IntegrityError, InvalidInput
from edgeserve.wire.manifest import GoldenTensor, SelfTest
from edgeserve.wire.tensors import numpy_dtype


def check_self_test(test: SelfTest) -> None:
    """Refuse, before any download, a self-test that cannot be run or proves nothing."""
    if not test.expected:
        raise InvalidInput("manifest self-test lists no expected outputs")
    for tensor in (*test.inputs, *test.expected):
        golden_array(tensor)


def run_self_test(model: VerifiedModel, test: SelfTest, options: RuntimeOptions) -> None:
    """Raise IntegrityError naming the first output that disagrees with the golden one."""
    inputs = {tensor.name: golden_array(tensor) for tensor in test.inputs}
    expected = {tensor.name: golden_array(tensor) for tensor in test.expected}
    session = open_session(model.card.format, model.artifact, options)
    try:
        outputs = session.run(inputs, list(expected))
    finally:
        session.close()
    for name, want in expected.items():
        _compare(name, outputs[name], want, test.atol, test.rtol)


def golden_array(tensor: GoldenTensor) -> npt.NDArray[Any]:
    dtype = numpy_dtype(tensor.datatype)
    if dtype.kind == "O":
        raise InvalidInput(f"golden tensor '{tensor.name}': BYTES tensors are not supported")
    count = int(np.prod(tensor.shape)) if tensor.shape else 1
    if any(dim < 0 for dim in tensor.shape) or count != len(tensor.data):
        raise InvalidInput(
            f"golden tensor '{tensor.name}': {len(tensor.data)} values do not fill shape "
            f"{tensor.shape}"
        )
    return np.asarray(tensor.data, dtype=dtype).reshape(tensor.shape)


def _compare(
    name: str, got: npt.NDArray[Any], want: npt.NDArray[Any], atol: float, rtol: float
) -> None:
    if got.shape != want.shape:
        raise IntegrityError(
            f"self-test output '{name}' has shape {list(got.shape)}, expected {list(want.shape)}"
        )
    got64 = got.astype(np.float64)
    want64 = want.astype(np.float64)
    close = np.isclose(got64, want64, atol=atol, rtol=rtol)
    if bool(close.all()):
        return
    error = np.where(close, 0.0, np.abs(got64 - want64))
    error = np.where(np.isnan(error), np.inf, error)
    worst = np.unravel_index(int(np.argmax(error)), error.shape)
    raise IntegrityError(
        f"self-test output '{name}' differs from the golden output at {int((~close).sum())} "
        f"of {close.size} values; worst at {list(map(int, worst))}: got {got64[worst]:.6g}, "
        f"expected {want64[worst]:.6g} (atol {atol:g}, rtol {rtol:g})"
    )
