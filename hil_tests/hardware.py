"""What hardware this host has for the HIL tests, and the reason a test must skip without it.

Pure functions over a :class:`HardwareProbe`, so the skip reasons are tested on any host.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgeserve.bench.machine import nvidia_gpus

CUDA_EP = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"
GPU_EXTRA_HINT = "install the 'gpu' extra (onnxruntime-gpu) with its CUDA/cuDNN/TensorRT libraries"


@dataclass(frozen=True)
class HardwareProbe:
    gpus: list[str] = field(default_factory=list)  # nvidia-smi lines
    ort_version: str | None = None
    ort_providers: list[str] = field(default_factory=list)
    torch_version: str | None = None
    torch_cuda: bool = False
    tensorrt_version: str | None = None


def probe_hardware() -> HardwareProbe:
    ort_version, providers = None, []
    try:
        ort = importlib.import_module("onnxruntime")
        ort_version, providers = ort.__version__, list(ort.get_available_providers())
    except ImportError:
        pass
    torch_version, torch_cuda = None, False
    try:
        torch_version = importlib.metadata.version("torch")
        torch_cuda = bool(importlib.import_module("torch").cuda.is_available())
    except (importlib.metadata.PackageNotFoundError, ImportError):
        pass
    try:
        tensorrt_version: str | None = importlib.metadata.version("tensorrt")
    except importlib.metadata.PackageNotFoundError:
        tensorrt_version = None
    return HardwareProbe(
        nvidia_gpus(), ort_version, providers, torch_version, torch_cuda, tensorrt_version
    )


def gpu_missing(probe: HardwareProbe) -> str | None:
    if probe.gpus:
        return None
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU: nvidia-smi is not on PATH (driver not installed, or no GPU)"
    return "no NVIDIA GPU: nvidia-smi lists none"


def ort_provider_missing(probe: HardwareProbe, provider: str) -> str | None:
    if probe.ort_version is None:
        return f"onnxruntime is not installed; {GPU_EXTRA_HINT}"
    if provider in probe.ort_providers:
        return None
    return (
        f"onnxruntime {probe.ort_version} offers {probe.ort_providers}, not {provider}: "
        f"{GPU_EXTRA_HINT}"
    )


def torch_cuda_missing(probe: HardwareProbe) -> str | None:
    if probe.torch_version is None:
        return "torch is not installed (a CUDA build of torch is needed)"
    if probe.torch_cuda:
        return None
    return f"torch {probe.torch_version} sees no CUDA device (a CPU build, or no driver)"


def tensorrt_missing(probe: HardwareProbe) -> str | None:
    if probe.tensorrt_version is not None:
        return None
    return "the tensorrt Python package is not installed (pip install tensorrt)"


def skip_if(reason: str | None) -> None:
    if reason is not None:
        pytest.skip(reason)


@dataclass(frozen=True)
class ArmTarget:
    host: str  # user@host
    ssh_key: Path | None

    def ssh_options(self) -> list[str]:
        # BatchMode: a test must fail, not hang on a password prompt.
        options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
        options += ["-o", "StrictHostKeyChecking=accept-new"]
        return options + (["-i", str(self.ssh_key)] if self.ssh_key else [])


def arm_target_missing(environ: dict[str, str]) -> str | None:
    if not environ.get("EDGESERVE_HIL_ARM_HOST"):
        return (
            "no ARM device: set EDGESERVE_HIL_ARM_HOST=user@host "
            "(and EDGESERVE_HIL_ARM_SSH_KEY=path if the default key does not log in)"
        )
    if shutil.which("ssh") is None or shutil.which("scp") is None:
        return "EDGESERVE_HIL_ARM_HOST is set but ssh/scp are not installed here"
    return None
