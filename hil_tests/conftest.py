"""Hardware-in-the-loop fixtures: what hardware this host has, and skips that say exactly
what is missing and how to provide it.

A GPU test needs three things that fail independently: an NVIDIA GPU (``nvidia-smi``),
an onnxruntime build with the GPU execution providers (the ``gpu`` extra,
``onnxruntime-gpu``, whose CUDA/cuDNN/TensorRT libraries must load), and for the torch
backend a CUDA build of torch. Each fixture checks one and skips with the reason, so a
run on a half-equipped host says which half is missing. The ARM tests need a device
named by ``EDGESERVE_HIL_ARM_HOST``; once it is named, an unreachable device is a
failure, not a skip. ``EDGESERVE_HIL_OUT`` (a folder) receives each test's figures as
JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hil_tests.hardware import (
    CUDA_EP,
    TENSORRT_EP,
    ArmTarget,
    HardwareProbe,
    arm_target_missing,
    gpu_missing,
    ort_provider_missing,
    probe_hardware,
    skip_if,
    tensorrt_missing,
    torch_cuda_missing,
)


@pytest.fixture(scope="session")
def hardware() -> HardwareProbe:
    return probe_hardware()


@pytest.fixture(scope="session")
def nvidia_gpu(hardware: HardwareProbe) -> list[str]:
    skip_if(gpu_missing(hardware))
    return hardware.gpus


@pytest.fixture(scope="session")
def ort_cuda(nvidia_gpu: list[str], hardware: HardwareProbe) -> None:
    skip_if(ort_provider_missing(hardware, CUDA_EP))


@pytest.fixture(scope="session")
def ort_tensorrt(nvidia_gpu: list[str], hardware: HardwareProbe) -> None:
    skip_if(ort_provider_missing(hardware, TENSORRT_EP))


@pytest.fixture(scope="session")
def torch_cuda(nvidia_gpu: list[str], hardware: HardwareProbe) -> None:
    skip_if(torch_cuda_missing(hardware))


@pytest.fixture(scope="session")
def native_tensorrt(torch_cuda: None, hardware: HardwareProbe) -> None:
    skip_if(tensorrt_missing(hardware))


@pytest.fixture(scope="session")
def arm_target() -> ArmTarget:
    skip_if(arm_target_missing(dict(os.environ)))
    key = os.environ.get("EDGESERVE_HIL_ARM_SSH_KEY")
    return ArmTarget(os.environ["EDGESERVE_HIL_ARM_HOST"], Path(key) if key else None)


@pytest.fixture(scope="session")
def record_figures() -> Any:
    """``record_figures(name, figures)``: print them, and write ``$EDGESERVE_HIL_OUT/name.json``."""
    out = os.environ.get("EDGESERVE_HIL_OUT")

    def record(name: str, figures: dict[str, Any]) -> None:
        text = json.dumps(figures, indent=2, default=str)
        print(f"\n{name}: {text}")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / f"{name}.json").write_text(text + "\n")

    return record
