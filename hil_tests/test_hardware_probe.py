"""The skip logic of the HIL tests, on any host: each missing piece of hardware or software
gives its own reason, and a complete GPU host gives none."""

from __future__ import annotations

from hil_tests.hardware import (
    CUDA_EP,
    TENSORRT_EP,
    HardwareProbe,
    arm_target_missing,
    gpu_missing,
    ort_provider_missing,
    probe_hardware,
    torch_cuda_missing,
)

CPU_ONLY = HardwareProbe(
    gpus=[], ort_version="1.32.0", ort_providers=["CPUExecutionProvider"],
    torch_version="2.13.0+cpu", torch_cuda=False,
)  # fmt: skip
GPU_HOST = HardwareProbe(
    gpus=["NVIDIA H100, 81559 MiB, 550.54"], ort_version="1.32.0",
    ort_providers=[TENSORRT_EP, CUDA_EP, "CPUExecutionProvider"],
    torch_version="2.13.0+cu128", torch_cuda=True, tensorrt_version="10.9",
)  # fmt: skip


def test_a_host_without_a_gpu_is_skipped_naming_nvidia_smi():
    assert "no NVIDIA GPU" in (gpu_missing(CPU_ONLY) or "")


def test_a_cpu_onnxruntime_is_skipped_naming_the_missing_provider_and_the_gpu_extra():
    reason = ort_provider_missing(CPU_ONLY, CUDA_EP) or ""
    assert CUDA_EP in reason and "onnxruntime-gpu" in reason and "1.32.0" in reason


def test_a_cpu_build_of_torch_is_skipped_naming_its_version():
    assert "2.13.0+cpu sees no CUDA device" in (torch_cuda_missing(CPU_ONLY) or "")


def test_a_complete_gpu_host_is_not_skipped():
    assert gpu_missing(GPU_HOST) is None
    assert ort_provider_missing(GPU_HOST, CUDA_EP) is None
    assert ort_provider_missing(GPU_HOST, TENSORRT_EP) is None
    assert torch_cuda_missing(GPU_HOST) is None


def test_arm_tests_skip_until_a_device_is_named():
    assert "EDGESERVE_HIL_ARM_HOST" in (arm_target_missing({}) or "")


def test_this_hosts_probe_agrees_with_its_onnxruntime():
    import onnxruntime as ort

    probe = probe_hardware()
    assert probe.ort_providers == ort.get_available_providers()
    assert (ort_provider_missing(probe, CUDA_EP) is None) == (CUDA_EP in probe.ort_providers)
