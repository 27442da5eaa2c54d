"""Local runtimes, chosen by the artifact's format from a string registry.

A runtime is imported only when a model of its format is loaded, so a device without
TFLite (or without ONNX Runtime) still runs the other, and nothing here ever pulls a GPU
package onto the edge. A missing runtime is a ``MissingExtra`` naming the extra to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from edgeserve.extras import require
from edgeserve.runtimes.base import Arrays, RuntimeOptions, RuntimeSession
from edgeserve.wire.errors import InvalidInput

RUNTIMES: dict[str, str] = {
    "onnx": "edgeserve.runtimes.onnx:OnnxRuntimeSession",
    "tflite": "edgeserve.runtimes.tflite:TFLiteSession",
}
# The library each format needs and the extra that installs it (TFLite accepts two
# interpreters and checks for itself). 'gpu' or, on a Jetson, NVIDIA's onnxruntime-gpu
# wheel provide the same module as 'cpu'.
LIBRARIES: dict[str, tuple[str, str]] = {"onnx": ("onnxruntime", "cpu")}


def open_session(artifact_format: str, path: Path, options: RuntimeOptions) -> RuntimeSession:
    """Load ``path`` with the runtime registered for ``artifact_format``."""
    try:
        target = RUNTIMES[artifact_format]
    except KeyError:
        raise InvalidInput(f"no runtime for artifact format '{artifact_format}'") from None
    if artifact_format in LIBRARIES:
        library, extra = LIBRARIES[artifact_format]
        require(library, extra, f"serving a '{artifact_format}' model")
    module_name, class_name = target.split(":")
    session_class = getattr(importlib.import_module(module_name), class_name)
    session: RuntimeSession = session_class(path, options)
    return session


__all__ = ["RUNTIMES", "Arrays", "RuntimeOptions", "RuntimeSession", "open_session"]
