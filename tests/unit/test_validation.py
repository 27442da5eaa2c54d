"""Request validation against the model card, before any runtime sees the input."""

import numpy as np
import pytest

from edgeserve.wire.errors import InvalidInput
from edgeserve.wire.model_card import ModelCard, TensorSpec
from edgeserve.wire.tensors import InferTensor
from edgeserve.wire.validation import validate_inputs

CARD = ModelCard(
    name="m",
    version="1",
    format="onnx",
    file="m.onnx",
    sha256="0" * 64,
    size_bytes=1,
    inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 4])],
    outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 2])],
)


def _check(array: np.ndarray, name: str = "input", max_batch: int = 8):
    return validate_inputs("m", CARD.inputs, [InferTensor.from_numpy(name, array)], max_batch)


def test_valid_batch_passes_through_unchanged():
    array = np.ones((3, 4), np.float32)
    assert _check(array)["input"] is array


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.ones((1, 5), np.float32), r"shape \[-1, 4\]"),
        (np.ones(4, np.float32), r"shape \[-1, 4\]"),
        (np.ones((1, 4), np.float64), "must be FP32, got FP64"),
        (np.array([[1, 2, np.nan, 4]], np.float32), "NaN or infinity"),
        (np.array([[1, 2, np.inf, 4]], np.float32), "NaN or infinity"),
        (np.ones((9, 4), np.float32), "exceeds max 8"),
        (np.ones((0, 4), np.float32), "empty"),
    ],
    ids=["wrong-width", "wrong-rank", "wrong-dtype", "nan", "inf", "batch", "empty"],
)
def test_bad_input_is_refused_naming_the_defect(array, message):
    with pytest.raises(InvalidInput, match=message):
        _check(array)


def test_unknown_input_name_is_refused():
    with pytest.raises(InvalidInput, match="no input 'pixels'"):
        _check(np.ones((1, 4), np.float32), name="pixels")
