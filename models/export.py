"""Torch -> ONNX export with a dynamic batch axis, checked against onnxruntime.

The legacy TorchScript exporter is used on purpose: for these small static graphs it
emits plain Gemm/Conv nodes (which the TFLite converter maps one to one) and its output
bytes depend only on the weights, so rebuilds hash identically.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.data import NUM_FEATURES, FloatArray
from models.evaluate import run_onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
_BATCH_AXIS = "batch"


class ExportMismatchError(RuntimeError):
    """The exported ONNX graph does not reproduce the torch model's outputs."""


def export_onnx_bytes(model: nn.Module, example_input: torch.Tensor, opset: int = OPSET) -> bytes:
    """Serialized ONNX of ``model`` (eval mode) with axis 0 of input and output dynamic."""
    model.eval()
    with (
        tempfile.TemporaryDirectory(prefix="edgeserve-export-") as scratch,
        warnings.catch_warnings(),
    ):
        target = Path(scratch) / "model.onnx"
        # torch >= 2.9 flags the TorchScript exporter as legacy; the choice is deliberate
        # (see module docstring), and pytest runs with warnings as errors.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example_input,),
            target,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: _BATCH_AXIS}, OUTPUT_NAME: {0: _BATCH_AXIS}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
        return target.read_bytes()


def export_classifier(model: nn.Module, path: Path) -> Path:
    """Export a digits classifier (``[N, 64]`` -> ``[N, 10]`` logits) to ``path``."""
    example = torch.zeros(1, NUM_FEATURES, dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(export_onnx_bytes(model, example))
    return path


def verify_against_torch(
    model: nn.Module, onnx_path: Path, x: FloatArray, rtol: float = 1e-4, atol: float = 1e-5
) -> float:
    """Raise :class:`ExportMismatchError` unless ORT matches torch on ``x``; returns max |diff|."""
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    actual = run_onnx(onnx_path, x)
    if actual.shape != expected.shape or not np.allclose(actual, expected, rtol=rtol, atol=atol):
        raise ExportMismatchError(
            f"{onnx_path.name}: ONNX outputs differ from torch (shape {actual.shape} vs "
            f"{expected.shape}, max diff {float(np.max(np.abs(actual - expected))):.3g})"
        )
    return float(np.max(np.abs(actual - expected)))
