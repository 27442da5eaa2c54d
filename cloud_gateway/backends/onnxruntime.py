"""ONNX Runtime for ``model.onnx``: TensorRT, CUDA or CPU execution providers.

Providers are ``config.providers`` (in preference order) intersected with what the
installed onnxruntime offers, narrowed by ``config.device``. ONNX Runtime silently falls
back to CPU when a GPU provider fails to initialise (missing CUDA/cuDNN libraries), so
the providers the session really uses are read back, logged, and checked when
``device="cuda"``. An ``InferenceSession`` is thread-safe, so ``run`` takes no lock.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from cloud_gateway.backends.base import Arrays, check_names, check_shape, estimate_memory
from cloud_gateway.repository.config import ModelConfig
from edgeserve.wire.errors import InternalError, InvalidInput, Unavailable

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
TRT_CACHE_DIR = ".trt_cache"

# ONNX Runtime's type strings for the tensor types the gateway serves.
ORT_TYPES: dict[str, np.dtype[Any]] = {
    f"tensor({name})": np.dtype(dtype)
    for name, dtype in [
        ("float", np.float32),
        ("float16", np.float16),
        ("double", np.float64),
        ("int8", np.int8),
        ("int16", np.int16),
        ("int32", np.int32),
        ("int64", np.int64),
        ("uint8", np.uint8),
        ("uint16", np.uint16),
        ("uint32", np.uint32),
        ("uint64", np.uint64),
        ("bool", np.bool_),
        ("string", np.object_),
    ]
}


def choose_providers(config: ModelConfig, available: list[str]) -> list[str]:
    """The execution providers to ask for, best first; raises if ``device`` can't be met."""
    if config.device == "cpu":
        return [CPU]
    chosen = [name for name in config.providers if name in available]
    if config.device == "cuda":
        if CUDA not in config.providers:
            raise InvalidInput(f"model '{config.name}': device='cuda' but providers omit {CUDA}")
        if CUDA not in chosen:
            raise Unavailable(
                f"model '{config.name}' needs {CUDA} (device='cuda'), but onnxruntime "
                f"{ort.__version__} offers only {available}: install the 'gpu' extra "
                "(onnxruntime-gpu) on a host with an NVIDIA GPU"
            )
        return chosen
    # "auto": take what is there; ONNX Runtime appends CPU anyway, listing it keeps logs true.
    return chosen if CPU in chosen else [*chosen, CPU]


def provider_entries(
    providers: list[str], version_dir: Path, fp16: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """(provider, options) pairs for ``InferenceSession(providers=...)``."""
    options: dict[str, dict[str, Any]] = {
        # Building a TensorRT engine takes minutes; cache it beside the versions so a
        # restart or a reload of the same version reuses it.
        TENSORRT: {
            "device_id": 0,
            "trt_fp16_enable": fp16,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(version_dir.parent / TRT_CACHE_DIR / version_dir.name),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(version_dir.parent / TRT_CACHE_DIR),
        },
        # Grow the arena only by what is asked: many models share one GPU.
        CUDA: {"device_id": 0, "arena_extend_strategy": "kSameAsRequested"},
        CPU: {},
    }
    return [(name, options.get(name, {})) for name in providers]


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads  # 0: ONNX Runtime's default (all cores)
    options.inter_op_num_threads = 1
    # Spinning pool threads keep a core busy between requests; many models share the host.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, config: ModelConfig, artifact: Path, *, fp16: bool = False) -> None:
        self._config = config
        requested = choose_providers(config, ort.get_available_providers())
        version_dir = artifact.parent
        if TENSORRT in requested:
            (version_dir.parent / TRT_CACHE_DIR / version_dir.name).mkdir(
                parents=True, exist_ok=True
            )
        entries = provider_entries(requested, version_dir, fp16)
        try:
            self._session: Any = ort.InferenceSession(
                str(artifact),
                sess_options=session_options(config.intra_op_threads),
                providers=entries,
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InternalError(f"onnxruntime could not load {artifact}: {exc}") from exc
        self.providers: list[str] = list(self._session.get_providers())
        self.device = "cuda:0" if set(GPU_PROVIDERS) & set(self.providers) else "cpu"
        self.memory_bytes = estimate_memory(config, artifact)
        self._log_providers(requested)
        if config.device == "cuda" and self.device == "cpu":
            raise Unavailable(
                f"model '{config.name}': {CUDA} is installed but failed to start "
                "(check the CUDA and cuDNN libraries); the session fell back to CPU"
            )
        self._inputs = {arg.name: arg for arg in self._session.get_inputs()}
        self._output_names = [spec.name for spec in config.outputs]
        self._check_outputs()

    def _log_providers(self, requested: list[str]) -> None:
        level = logging.INFO if self.providers == requested else logging.WARNING
        log.log(
            level,
            "onnxruntime session ready",
            extra={
                "model": self._config.name,
                "providers_requested": requested,
                "providers_used": self.providers,
                "device": self.device,
            },
        )

    def _check_outputs(self) -> None:
        model_outputs = {arg.name for arg in self._session.get_outputs()}
        unknown = [name for name in self._output_names if name not in model_outputs]
        if unknown:
            raise InvalidInput(
                f"model '{self._config.name}': config outputs {unknown} are not in the "
                f"ONNX graph (outputs: {sorted(model_outputs)})"
            )

    def run(self, inputs: Arrays) -> Arrays:
        if self._session is None:
            raise Unavailable(f"model '{self._config.name}' is unloaded")
        self._check(inputs)
        try:
            results = self._session.run(self._output_names, inputs)
        except ort.capi.onnxruntime_pybind11_state.InvalidArgument as exc:
            raise InvalidInput(f"onnxruntime rejected the input: {exc}") from exc
        except Exception as exc:
            raise InternalError(f"onnxruntime failed on '{self._config.name}': {exc}") from exc
        return dict(zip(self._output_names, results, strict=True))

    def _check(self, inputs: Arrays) -> None:
        check_names(self._inputs, inputs, self._config.name)
        for name, array in inputs.items():
            arg = self._inputs[name]
            expected = ORT_TYPES.get(arg.type)
            if expected is not None and array.dtype != expected:
                raise InvalidInput(f"input '{name}' is {array.dtype}, the model expects {arg.type}")
            check_shape(name, arg.shape, array.shape)

    def close(self) -> None:
        self._session = None
