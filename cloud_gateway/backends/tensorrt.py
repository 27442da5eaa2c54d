"""Native TensorRT 10 engines (``model.plan``) on an NVIDIA GPU.

``tensorrt`` and ``torch`` are imported only when an engine is loaded or built, so this
module imports anywhere. torch (a CUDA build) provides the device buffers and streams,
which avoids a cuda-python dependency. A plan only loads on the TensorRT version and GPU
architecture it was built for: build it on the target with :func:`build_engine_from_onnx`.

Concurrency: an execution context holds its input shapes and tensor addresses, so it
serves one call at a time. The backend creates ``config.instances`` contexts, each with
its own CUDA stream, and lends one to each call; further calls wait for a free one.
"""

from __future__ import annotations

import importlib
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud_gateway.backends.base import Arrays
from cloud_gateway.repository.config import ModelConfig
from edgeserve.wire.errors import EdgeServeError, InternalError, InvalidInput, Unavailable
from edgeserve.wire.tensors import numpy_dtype
from edgeserve.wire.validation import check_signature

GPU_HINT = "TensorRT backend needs the 'gpu' extra and an NVIDIA GPU"


def import_gpu_stack() -> tuple[Any, Any]:
    """``(tensorrt, torch)``, or Unavailable saying what is missing."""
    try:
        trt = importlib.import_module("tensorrt")
        torch = importlib.import_module("torch")
    except ImportError as exc:
        raise Unavailable(f"{GPU_HINT}: {exc}") from exc
    if not torch.cuda.is_available():
        raise Unavailable(f"{GPU_HINT}: torch {torch.__version__} sees no CUDA device")
    return trt, torch


@dataclass(slots=True)
class _Slot:
    context: Any  # tensorrt.IExecutionContext
    stream: Any  # torch.cuda.Stream


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, config: ModelConfig, artifact: Path) -> None:
        self._trt, self._torch = import_gpu_stack()
        self._config = config
        self._device = self._torch.device("cuda", self._torch.cuda.current_device())
        self.device = str(self._device)
        self._runtime = self._trt.Runtime(self._trt.Logger(self._trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(artifact.read_bytes())
        if self._engine is None:
            raise InternalError(
                f"TensorRT {self._trt.__version__} could not load {artifact}: rebuild the "
                "plan with this TensorRT version on this GPU"
            )
        self._input_names, self._output_names = self._io_names()
        self._check_signature()
        self._slots: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        for _ in range(config.instances):
            context = self._engine.create_execution_context()
            if context is None:
                raise Unavailable(f"no GPU memory for a TensorRT context of '{config.name}'")
            self._slots.put(_Slot(context, self._torch.cuda.Stream(self._device)))
        self.providers = [f"TensorRT {self._trt.__version__}"]
        self.memory_bytes = self._memory_estimate(artifact)

    def _io_names(self) -> tuple[list[str], list[str]]:
        engine, mode = self._engine, self._trt.TensorIOMode
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        inputs = [name for name in names if engine.get_tensor_mode(name) == mode.INPUT]
        outputs = [name for name in names if engine.get_tensor_mode(name) == mode.OUTPUT]
        return inputs, outputs

    def _engine_dtype(self, name: str) -> np.dtype[Any]:
        try:
            dtype: np.dtype[Any] = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
        except TypeError as exc:  # bf16, fp8, int4 have no numpy type
            raise InvalidInput(f"engine tensor '{name}' has no numpy type: {exc}") from exc
        return dtype

    def _check_signature(self) -> None:
        config = self._config
        declared = [spec.name for spec in config.inputs]
        if sorted(declared) != sorted(self._input_names):
            raise InvalidInput(
                f"model '{config.name}': config inputs {declared} != engine inputs "
                f"{self._input_names}"
            )
        missing = [spec.name for spec in config.outputs if spec.name not in self._output_names]
        if missing:
            raise InvalidInput(f"model '{config.name}': engine has no output {missing}")
        for spec in [*config.inputs, *config.outputs]:
            if numpy_dtype(spec.datatype) != self._engine_dtype(spec.name):
                raise InvalidInput(
                    f"model '{config.name}': '{spec.name}' is {spec.datatype} in the config, "
                    f"{self._engine_dtype(spec.name)} in the engine"
                )

    def _memory_estimate(self, artifact: Path) -> int:
        if self._config.memory_estimate_bytes is not None:
            return self._config.memory_estimate_bytes
        # Weights (about the plan size) plus each context's activation memory.
        per_context = getattr(self._engine, "device_memory_size_v2", None)
        if per_context is None:
            per_context = self._engine.device_memory_size
        return int(artifact.stat().st_size + self._config.instances * per_context)

    def run(self, inputs: Arrays) -> Arrays:
        if self._engine is None:
            raise Unavailable(f"model '{self._config.name}' is unloaded")
        check_signature(self._config.name, self._config.inputs, inputs)
        slot = self._slots.get()
        try:
            return self._execute(slot, inputs)
        except EdgeServeError:
            raise
        except self._torch.cuda.OutOfMemoryError as exc:
            raise Unavailable(f"out of GPU memory running '{self._config.name}'") from exc
        except Exception as exc:
            raise InternalError(f"TensorRT failed on '{self._config.name}': {exc}") from exc
        finally:
            self._slots.put(slot)

    def _execute(self, slot: _Slot, inputs: Arrays) -> Arrays:
        torch, context = self._torch, slot.context
        # Copies, allocations and the engine all run on the slot's stream, in order.
        with torch.cuda.device(self._device), torch.cuda.stream(slot.stream):
            buffers: dict[str, Any] = {}  # device tensors must outlive the execution
            for name in self._input_names:
                host = np.require(inputs[name], requirements=["C", "W"])
                buffers[name] = torch.from_numpy(host).to(self._device)
                if not context.set_input_shape(name, tuple(host.shape)):
                    raise InvalidInput(
                        f"input '{name}' shape {list(host.shape)} is outside the engine's "
                        "optimization profile (max batch size?)"
                    )
                context.set_tensor_address(name, buffers[name].data_ptr())
            for name in self._output_names:  # outputs the config skips still need an address
                buffers[name] = self._output_buffer(context, name)
            if not context.execute_async_v3(slot.stream.cuda_stream):
                raise InternalError(f"TensorRT could not enqueue '{self._config.name}'")
            slot.stream.synchronize()
            arrays = {spec.name: buffers[spec.name].cpu().numpy() for spec in self._config.outputs}
        return arrays

    def _output_buffer(self, context: Any, name: str) -> Any:
        shape = tuple(context.get_tensor_shape(name))
        if any(dim < 0 for dim in shape):
            raise InternalError(f"output '{name}' has a data-dependent shape {shape}")
        host_dtype = self._engine_dtype(name)
        dtype = self._torch.from_numpy(np.empty(0, dtype=host_dtype)).dtype
        tensor = self._torch.empty(shape, dtype=dtype, device=self._device)
        context.set_tensor_address(name, tensor.data_ptr())
        return tensor

    def close(self) -> None:
        while True:  # contexts go before the engine that made them
            try:
                self._slots.get_nowait()
            except queue.Empty:
                break
        self._engine = None
        self._runtime = None


def build_engine_from_onnx(
    onnx_path: Path, plan_path: Path, max_batch: int, fp16: bool = False
) -> Path:
    """Build ``plan_path`` from ``onnx_path`` on this GPU, batch axis 1..``max_batch``.

    Only axis 0 may be dynamic. The profile's optimum is ``max_batch``: under load the
    dynamic batcher fills batches, and that is where kernel choice matters.
    """
    trt, _ = import_gpu_stack()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise InvalidInput(f"TensorRT could not parse {onnx_path}: {errors}")
    build_config = builder.create_builder_config()
    if fp16:
        build_config.set_flag(trt.BuilderFlag.FP16)
    profile = _batch_profile(builder, network, max_batch)
    if profile is not None:
        build_config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, build_config)
    if serialized is None:
        raise InternalError(f"TensorRT could not build an engine from {onnx_path}")
    partial = plan_path.with_name(plan_path.name + ".partial")
    with partial.open("wb") as handle:
        handle.write(serialized)
    partial.replace(plan_path)  # a reader never sees half a plan
    return plan_path


def _batch_profile(builder: Any, network: Any, max_batch: int) -> Any | None:
    if max_batch < 1:
        raise InvalidInput(f"max_batch must be >= 1, got {max_batch}")
    profile, dynamic = builder.create_optimization_profile(), False
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        dims = list(tensor.shape)
        if any(dim < 0 for dim in dims[1:]):
            raise InvalidInput(f"input '{tensor.name}' {dims}: only the batch axis may be dynamic")
        if dims and dims[0] < 0:
            rest = dims[1:]
            profile.set_shape(tensor.name, (1, *rest), (max_batch, *rest), (max_batch, *rest))
            dynamic = True
    return profile if dynamic else None
