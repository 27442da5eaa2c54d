"""Gateway backends: one :class:`Backend` interface over ONNX Runtime, PyTorch and TensorRT.

``ModelConfig.backend`` picks an implementation by name from :data:`BACKENDS`, and its
module is imported only then, so the gateway serves ONNX models on a host without torch
or TensorRT installed, and importing this package never pulls in either. Each backend
loads its artifact from a version folder (``model.onnx``, ``model.pt2``/``model.pt``,
``model.plan``), reports where it runs and what it holds, and translates its library's
errors into the edgeserve exception tree.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from cloud_gateway.backends.base import Arrays, Backend
from cloud_gateway.repository.config import ModelConfig, artifact_path
from edgeserve.wire.errors import InvalidInput, Unavailable

BACKENDS: dict[str, str] = {
    "onnxruntime": "cloud_gateway.backends.onnxruntime:OnnxRuntimeBackend",
    "torch": "cloud_gateway.backends.torch:TorchBackend",
    "tensorrt": "cloud_gateway.backends.tensorrt:TensorRTBackend",
}


def load_backend(config: ModelConfig, version_dir: Path) -> Backend:
    """Load the artifact in ``version_dir`` with the backend ``config.backend`` names."""
    try:
        target = BACKENDS[config.backend]
    except KeyError:
        raise InvalidInput(f"no gateway backend named '{config.backend}'") from None
    artifact = artifact_path(version_dir, config.backend)
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise Unavailable(f"backend '{config.backend}' is not installed: {exc}") from exc
    backend: Backend = getattr(module, class_name)(config, artifact)
    return backend


__all__ = ["BACKENDS", "Arrays", "Backend", "load_backend"]
