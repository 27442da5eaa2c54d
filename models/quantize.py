"""int8 static quantization of ONNX models with onnxruntime, calibrated on real data.

QDQ format with per-channel int8 weights and uint8 activations: that is what ORT's CPU
kernels run fastest, and ``reduce_range`` (7-bit weights) avoids the int16 accumulator
saturation of x86 CPUs without VNNI, so the same file gives the same answers on any edge
CPU. The calibration split is disjoint from both training and test data.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from models.data import FloatArray


@dataclass(frozen=True)
class QuantizeConfig:
    """The quantize_static knobs; recorded in the int8 card's ``source``."""

    per_channel: bool = True
    reduce_range: bool = True
    calibrate_method: str = "MinMax"
    batch_size: int = 32
    preprocess: bool = True
    # Logits stay float: the last Gemm then emits fp32 directly (ORT fuses it into a
    # QGemm with float output), which costs nothing and keeps softmax confidences smooth
    # instead of stepping in units of the logit scale.
    float_gemm_outputs: bool = True

    def as_source(self) -> dict[str, object]:
        return {
            "quantizer": "onnxruntime.quantization.quantize_static",
            "format": "QDQ",
            "activations": "uint8",
            "weights": "int8",
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "calibrate_method": self.calibrate_method,
            "preprocess": self.preprocess,
            "float_gemm_outputs": self.float_gemm_outputs,
        }


class ArrayCalibrationReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds fixed batches of an in-memory array to the calibrator, in order."""

    def __init__(self, input_name: str, batches: Sequence[FloatArray]) -> None:
        self._input_name = input_name
        self._batches = list(batches)
        self._iterator: Iterator[FloatArray] = iter(self._batches)

    @classmethod
    def from_array(cls, input_name: str, x: FloatArray, batch_size: int) -> ArrayCalibrationReader:
        batches = [
            np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)
            for i in range(0, len(x), batch_size)
        ]
        return cls(input_name, batches)

    def get_next(self) -> dict[str, FloatArray] | None:
        batch = next(self._iterator, None)
        return None if batch is None else {self._input_name: batch}

    def rewind(self) -> None:
        self._iterator = iter(self._batches)


def _input_name(model_path: Path) -> str:
    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    return str(next(inp.name for inp in graph.input if inp.name not in initializers))


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    calibration: FloatArray | Sequence[FloatArray],
    config: QuantizeConfig | None = None,
) -> Path:
    """Statically quantize ``fp32_path`` into ``int8_path``.

    ``calibration`` is either one array (cut into ``config.batch_size`` batches) or a
    ready list of batches (for image models whose batches are large).
    """
    config = config or QuantizeConfig()
    input_name = _input_name(fp32_path)
    if isinstance(calibration, np.ndarray):
        reader = ArrayCalibrationReader.from_array(input_name, calibration, config.batch_size)
    else:
        reader = ArrayCalibrationReader(input_name, calibration)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    extra_options: dict[str, object] = {}
    if config.float_gemm_outputs:
        extra_options["OpTypesToExcludeOutputQuantization"] = ["Gemm"]
    with tempfile.TemporaryDirectory(prefix="edgeserve-quant-") as scratch:
        source = fp32_path
        if config.preprocess:
            # Shape inference plus ORT's graph optimisations (e.g. Conv+BN folding) give
            # the quantizer fewer, larger ops to calibrate.
            source = Path(scratch) / "preprocessed.onnx"
            quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=False)
        quantize_static(
            str(source),
            str(int8_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, config.calibrate_method),
            extra_options=extra_options,
        )
    return int8_path
