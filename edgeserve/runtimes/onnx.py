"""ONNX Runtime on the CPU: the agent's default runtime for ``.onnx`` artifacts.

A model must be one file: the agent verifies an artifact by one hash, and ONNX Runtime
would read external data files (``model.onnx.data``) that no hash covered, so such a
model is refused with the command that makes it one file.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from edgeserve.runtimes.base import Arrays, RuntimeOptions
from edgeserve.runtimes.onnx_files import refuse_external_data
from edgeserve.wire.errors import InternalError, InvalidInput


class OnnxRuntimeSession:
    runtime_name = "onnxruntime"

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        refuse_external_data(path)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.threads
        session_options.inter_op_num_threads = 1
        # Spinning worker threads burn a core between requests on a 2-core device.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=session_options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InternalError(f"onnxruntime could not load {path.name}: {exc}") from exc

    def run(self, inputs: Arrays, output_names: list[str]) -> Arrays:
        try:
            results = self._session.run(output_names, inputs)
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as exc:
            raise InvalidInput(f"onnxruntime rejected the input: {exc}") from exc
        except Exception as exc:
            raise InternalError(f"onnxruntime failed: {exc}") from exc
        return dict(zip(output_names, results, strict=True))

    def close(self) -> None:
        del self._session
