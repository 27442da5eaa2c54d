"""PyTorch for ``model.pt2`` (``torch.export``) and ``model.pt`` (TorchScript).

Inputs are passed positionally in ``config.inputs`` order; the model's result (one
tensor, a tuple/list, or a dict keyed by output name) is mapped onto ``config.outputs``.
It runs on CUDA when ``device`` allows it and torch sees a GPU, else on the CPU.

``config.intra_op_threads`` is deliberately not applied: ``torch.set_num_threads`` is
process-global, so calling it per model would let the last model loaded decide for all.
The gateway's ``main()`` sets it once for the process.

Concurrency: TorchScript modules are thread-safe and run without a lock. An exported
program runs as a plain ``nn.Module`` whose thread-safety torch does not promise, so its
forward calls are serialised by a lock (tensor conversion stays outside the lock).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.export.passes import move_to_device_pass

from cloud_gateway.backends.base import Arrays, estimate_memory
from cloud_gateway.repository.config import ModelConfig
from edgeserve.wire.errors import EdgeServeError, InternalError, Unavailable
from edgeserve.wire.tensors import DATATYPE_TO_NUMPY
from edgeserve.wire.validation import check_signature

# torch.jit.load is untyped since its deprecation; this is its documented signature.
_jit_load = cast(Callable[..., torch.jit.ScriptModule], torch.jit.load)


def choose_device(config: ModelConfig) -> torch.device:
    """CUDA when allowed and present; ``device="cuda"`` without it is Unavailable."""
    has_cuda = torch.cuda.is_available()
    if config.device == "cuda" and not has_cuda:
        raise Unavailable(
            f"model '{config.name}' needs CUDA (device='cuda'), but torch {torch.__version__} "
            "sees no GPU"
        )
    if config.device == "cpu" or not has_cuda:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def load_module(artifact: Path, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The callable module and what runs it (``"torch.export"`` or ``"torchscript"``)."""
    if artifact.suffix == ".pt2":
        program = torch.export.load(artifact)
        if device.type != "cpu":
            program = move_to_device_pass(program, device)
        # No .eval(): an exported program keeps the mode it was exported in (and refuses it).
        return program.module(), "torch.export"
    with warnings.catch_warnings():
        # Serving existing TorchScript artifacts is the point; torch >= 2.10 flags the API.
        warnings.filterwarnings("ignore", r".*torch\.jit\.load", DeprecationWarning)
        module = _jit_load(str(artifact), map_location=device)
    return module.eval(), "torchscript"


class TorchBackend:
    name = "torch"

    def __init__(self, config: ModelConfig, artifact: Path) -> None:
        self._config = config
        self._device = choose_device(config)
        on_cuda = self._device.type == "cuda"
        before = torch.cuda.memory_allocated(self._device) if on_cuda else 0
        try:
            module, kind = load_module(artifact, self._device)
        except Exception as exc:
            raise InternalError(f"torch could not load {artifact}: {exc}") from exc
        self._module: torch.nn.Module | None = module
        # Concurrent loads on the same GPU blur this delta; it is an estimate, like the rest.
        measured = torch.cuda.memory_allocated(self._device) - before if on_cuda else None
        self.memory_bytes = estimate_memory(config, artifact, measured)
        self.device = str(self._device)
        self.providers = [kind]
        self._guard: AbstractContextManager[Any] = (
            nullcontext() if kind == "torchscript" else threading.Lock()
        )

    def run(self, inputs: Arrays) -> Arrays:
        module = self._module
        if module is None:
            raise Unavailable(f"model '{self._config.name}' is unloaded")
        check_signature(self._config.name, self._config.inputs, inputs)
        try:
            with torch.inference_mode():
                args = [self._to_tensor(inputs[spec.name]) for spec in self._config.inputs]
                with self._guard:
                    result = module(*args)
                return self._to_arrays(result)
        except EdgeServeError:
            raise
        except torch.cuda.OutOfMemoryError as exc:
            raise Unavailable(f"out of GPU memory running '{self._config.name}'") from exc
        except Exception as exc:
            raise InternalError(f"torch failed on '{self._config.name}': {exc}") from exc

    def _to_tensor(self, array: np.ndarray[Any, Any]) -> torch.Tensor:
        # from_numpy shares memory and warns on read-only arrays (np.frombuffer of a body).
        host = np.require(array, requirements=["C", "W"])
        return torch.from_numpy(host).to(self._device)

    def _to_arrays(self, result: Any) -> Arrays:
        specs = self._config.outputs
        if isinstance(result, torch.Tensor):
            tensors = [result]
        elif isinstance(result, tuple | list):
            tensors = list(result)
        elif isinstance(result, dict) and all(spec.name in result for spec in specs):
            tensors = [result[spec.name] for spec in specs]
        else:
            raise InternalError(
                f"model '{self._config.name}' returned {type(result).__name__}; expected a "
                f"tensor, a tuple of tensors or a dict with {[spec.name for spec in specs]}"
            )
        if len(tensors) != len(specs):
            raise InternalError(
                f"model '{self._config.name}' returned {len(tensors)} outputs, "
                f"config declares {len(specs)}"
            )
        arrays: Arrays = {}
        for spec, tensor in zip(specs, tensors, strict=True):
            array = tensor.detach().cpu().numpy()
            if array.dtype != DATATYPE_TO_NUMPY.get(spec.datatype):
                raise InternalError(
                    f"output '{spec.name}' is {array.dtype}, config declares {spec.datatype}"
                )
            arrays[spec.name] = array
        return arrays

    def close(self) -> None:
        self._module = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()  # hand the cached blocks back to other models/processes
