"""TFLite (LiteRT) for ``.tflite`` artifacts.

``ai-edge-litert`` is the maintained interpreter; ``tflite-runtime`` is accepted where it
is what a device has. The interpreter is not thread-safe and keeps one input shape, so
calls are serialised and the input is resized only when the batch size changes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgeserve.extras import MissingExtra
from edgeserve.runtimes.base import Arrays, RuntimeOptions
from edgeserve.wire.errors import InternalError, InvalidInput


def interpreter_class() -> Any:
    """The installed TFLite ``Interpreter`` class: LiteRT's, else tflite-runtime's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise MissingExtra(
                "serving a 'tflite' model needs a TFLite interpreter: "
                "pip install 'edgeserve[tflite]' (ai-edge-litert)"
            ) from exc
    return Interpreter


class TFLiteSession:
    runtime_name = "tflite"

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        try:
            self._interpreter = interpreter_class()(
                model_path=str(path), num_threads=options.threads
            )
            self._interpreter.allocate_tensors()
        except MissingExtra:
            raise
        except Exception as exc:
            raise InternalError(f"TFLite could not load {path.name}: {exc}") from exc
        self._inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
        self._outputs = {d["name"]: d for d in self._interpreter.get_output_details()}
        self._lock = threading.Lock()

    def run(self, inputs: Arrays, output_names: list[str]) -> Arrays:
        with self._lock:
            for name, array in inputs.items():
                self._set_input(name, array)
            try:
                self._interpreter.invoke()
            except Exception as exc:
                raise InternalError(f"TFLite invoke failed: {exc}") from exc
            return {
                name: np.array(self._interpreter.get_tensor(self._outputs[name]["index"]))
                for name in output_names
            }

    def _set_input(self, name: str, array: Any) -> None:
        detail = self._inputs.get(name)
        if detail is None:
            raise InvalidInput(f"TFLite model has no input '{name}'")
        if tuple(detail["shape"]) != array.shape:
            self._interpreter.resize_tensor_input(detail["index"], list(array.shape))
            self._interpreter.allocate_tensors()
            self._inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
            detail = self._inputs[name]
        self._interpreter.set_tensor(detail["index"], array)

    def close(self) -> None:
        del self._interpreter
