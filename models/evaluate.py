"""Running and scoring artifacts with the runtimes that will serve them.

Kept free of torch (and of the ``tflite`` schema package) so the tests and any device
that has only onnxruntime or the LiteRT interpreter can check the committed models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeserve.runtimes.tflite import interpreter_class
from models.data import FloatArray, LabelArray


def ort_session(model: Path | bytes) -> Any:
    """A single-threaded CPU onnxruntime session (single thread: reproducible outputs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(model: Path | bytes, x: FloatArray, batch_size: int = 256) -> FloatArray:
    """The model's first output for all rows of ``x``, computed in batches."""
    session = ort_session(model)
    input_name = session.get_inputs()[0].name
    chunks = [
        session.run(None, {input_name: np.ascontiguousarray(x[i : i + batch_size])})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.asarray(np.concatenate(chunks), dtype=np.float32)


def run_tflite(model: Path | bytes, x: FloatArray) -> FloatArray:
    """Run all of ``x`` as one batch through a TFLite model, resizing its batch axis."""
    content = model.read_bytes() if isinstance(model, Path) else model
    interpreter = interpreter_class()(model_content=content, num_threads=1)
    input_detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(input_detail["index"], list(x.shape), strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], np.ascontiguousarray(x, dtype=np.float32))
    interpreter.invoke()
    output_detail = interpreter.get_output_details()[0]
    return np.array(interpreter.get_tensor(output_detail["index"]), dtype=np.float32)


def top1_accuracy(logits: FloatArray, y: LabelArray) -> float:
    return float(np.mean(logits.argmax(axis=1) == y))


def onnx_accuracy(model: Path, x: FloatArray, y: LabelArray) -> float:
    """Top-1 accuracy of an ONNX classifier under onnxruntime."""
    return top1_accuracy(run_onnx(model, x), y)


def tflite_accuracy(model: Path, x: FloatArray, y: LabelArray) -> float:
    """Top-1 accuracy of a TFLite classifier under the LiteRT interpreter."""
    return top1_accuracy(run_tflite(model, x), y)
