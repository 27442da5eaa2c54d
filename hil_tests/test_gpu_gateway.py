"""The cloud gateway on a real NVIDIA GPU: ONNX Runtime's CUDA and TensorRT execution
providers, torch on CUDA and a native TensorRT engine answer like the CPU does, over
OIP v2 REST and gRPC, from the real gateway process; batching throughput on the GPU vs
the CPU in one run; and the TensorRT engine cache makes a reload skip the engine build.

One gateway process serves one repository in which each model exists once per backend
(``<model>-cpu``, ``-cuda``, ``-trt``, ``-torch``, ``-plan``), so every comparison is
between two answers of the same process to the same rows.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cloud_gateway.repository.seed import config_from_card
from edgeserve.artifacts import packaged_artifacts
from edgeserve.bench import loadgen
from edgeserve.bench.gateway_harness import build_heavy_mlp
from edgeserve.client import OipHttpClient
from edgeserve.processes import ServiceProcess, gateway_process
from edgeserve.wire.model_card import ModelCard
from hil_tests.hardware import CUDA_EP, TENSORRT_EP, HardwareProbe

pytestmark = pytest.mark.hil

CPU_EP = "CPUExecutionProvider"
# model suffix -> (backend, device, execution providers)
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    "cpu": ("onnxruntime", "cpu", [CPU_EP]),
    "cuda": ("onnxruntime", "cuda", [CUDA_EP, CPU_EP]),
    "trt": ("onnxruntime", "cuda", [TENSORRT_EP, CUDA_EP, CPU_EP]),
    "trtcache": ("onnxruntime", "cuda", [TENSORRT_EP, CUDA_EP, CPU_EP]),
    "torch": ("torch", "cuda", []),
    "plan": ("tensorrt", "cuda", []),
}
MAX_BATCH = 64
# TensorRT and cuDNN may pick TF32 kernels on Ampere and later: agree to ~1e-3 relative.
RTOL = ATOL = 1e-2


@dataclass
class GpuGateway:
    process: ServiceProcess
    repository: Path
    log: Path
    key: str

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.process.ports['http']}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.process.ports['grpc']}"

    def client(self) -> OipHttpClient:
        return OipHttpClient(
            self.http, timeout=600, headers={"Authorization": f"Bearer {self.key}"}
        )

    def admin(self, action: str, model: str) -> None:
        """Repository control (load/unload), allowed to a '*' tenant."""
        reply = httpx.post(
            f"{self.http}/v2/repository/models/{model}/{action}",
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=600,
        )
        assert reply.status_code == 200, f"{action} {model}: {reply.status_code} {reply.text}"

    def loaded_with(self, model: str) -> dict[str, object]:
        """The gateway's own 'model loaded' log record for ``model`` (the latest one)."""
        lines = self.log.read_text().splitlines()
        records: list[dict[str, object]] = [json.loads(x) for x in lines if x[:1] == "{"]
        loads = [r for r in records if r.get("msg") == "model loaded" and r.get("model") == model]
        assert loads, f"the gateway logged no load of {model}"
        return loads[-1]


def write_model(repository: Path, name: str, variant: str, artifact_bytes: bytes) -> None:
    backend, device, providers = VARIANTS[variant]
    card = ModelCard.load(packaged_artifacts() / "digits-cloud.card.json")
    text = config_from_card(card.model_copy(update={"name": name}), max_batch_size=MAX_BATCH)
    settings = f'backend = "{backend}"\ndevice = "{device}"\n'
    if providers:
        settings += f"providers = {json.dumps(providers)}\n"
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.toml").write_text(
        text.replace('backend = "onnxruntime"\n', settings)
    )
    filename = {"onnxruntime": "model.onnx", "torch": "model.pt2", "tensorrt": "model.plan"}
    (repository / name / "1" / filename[backend]).write_bytes(artifact_bytes)


def torch_program_bytes(onnx_path: Path, scratch: Path) -> bytes:
    """The reference CNN's exact weights as a torch.export program with a dynamic batch."""
    import onnx
    import torch
    from onnx import numpy_helper

    from models.nets import CloudCNN

    graph = onnx.load(str(onnx_path)).graph
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    model = CloudCNN()
    model.load_state_dict(weights)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(model.eval(), (torch.zeros(2, 64),), dynamic_shapes=({0: batch},))
    torch.export.save(program, scratch / "model.pt2")
    return (scratch / "model.pt2").read_bytes()


def plan_bytes(onnx_path: Path, scratch: Path) -> bytes | None:
    """A native TensorRT plan of the reference model, or None without tensorrt here."""
    from cloud_gateway.backends.tensorrt import build_engine_from_onnx
    from edgeserve.wire.errors import Unavailable

    try:
        return build_engine_from_onnx(onnx_path, scratch / "model.plan", MAX_BATCH).read_bytes()
    except Unavailable:
        return None


def build_repository(root: Path, hardware_torch_cuda: bool) -> Path:
    repository, scratch = root / "models", root / "scratch"
    scratch.mkdir(parents=True)
    onnx_path = packaged_artifacts() / "digits-cloud.onnx"
    onnx_bytes = onnx_path.read_bytes()
    for variant in ("cpu", "cuda", "trt", "trtcache"):
        write_model(repository, f"digits-cloud-{variant}", variant, onnx_bytes)
    if hardware_torch_cuda:
        write_model(
            repository, "digits-cloud-torch", "torch", torch_program_bytes(onnx_path, scratch)
        )
        plan = plan_bytes(onnx_path, scratch)
        if plan is not None:
            write_model(repository, "digits-cloud-plan", "plan", plan)
    build_heavy_mlp(scratch / "heavy.onnx")
    for variant in ("cpu", "cuda"):
        write_model(repository, f"heavy-{variant}", variant, (scratch / "heavy.onnx").read_bytes())
    return repository


@pytest.fixture(scope="module")
def gpu_gateway(
    nvidia_gpu: list[str], hardware: HardwareProbe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GpuGateway]:
    from cloud_gateway.tenancy import TenantStore

    root = tmp_path_factory.mktemp("gpu-gateway")
    repository = build_repository(root, hardware.torch_cuda)
    state = root / "state"
    state.mkdir()
    store = TenantStore(state / "tenants.db")
    # '*' may load and unload; no limit, the throughput test floods on purpose.
    _, key = store.add_tenant("hil", ["*"], rate_per_s=1e6, burst=1e6, max_in_flight=10_000)
    store.close()
    process = gateway_process(root, state, name="gateway", repository=str(repository))
    process.start(timeout=120)
    try:
        yield GpuGateway(process, repository, root / "gateway.log", key)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def digits_batch() -> tuple[np.ndarray, np.ndarray]:
    from models.data import load_split

    x, y = load_split(packaged_artifacts(), "test")
    return x[:MAX_BATCH], y[:MAX_BATCH]


def rest_logits(gateway: GpuGateway, model: str, x: np.ndarray) -> np.ndarray:
    with gateway.client() as client:
        answer = client.infer(model, {"input": x})
    return np.asarray(answer.outputs[0].data).reshape(len(x), -1)


def grpc_logits(gateway: GpuGateway, model: str, x: np.ndarray) -> np.ndarray:
    import grpc

    from edgeserve.wire import oip_grpc
    from edgeserve.wire.grpc_stubs import inference_stub
    from edgeserve.wire.tensors import InferRequest, InferTensor

    request = InferRequest(model, [InferTensor.from_numpy("input", x)])
    with grpc.insecure_channel(gateway.grpc) as channel:
        reply = inference_stub(channel).ModelInfer(
            oip_grpc.request_to_proto(request),
            metadata=[("authorization", f"Bearer {gateway.key}")],
            timeout=600,
        )
    answer = oip_grpc.response_from_proto(reply)
    return np.asarray(answer.outputs[0].data).reshape(len(x), -1)


def assert_matches_cpu(gateway: GpuGateway, model: str, x: np.ndarray, y: np.ndarray) -> None:
    expected = rest_logits(gateway, "digits-cloud-cpu", x)
    for front_door, logits in (
        ("REST", rest_logits(gateway, model, x)),
        ("gRPC", grpc_logits(gateway, model, x)),
    ):
        np.testing.assert_allclose(
            logits, expected, rtol=RTOL, atol=ATOL, err_msg=f"{model} over {front_door} vs the CPU"
        )
        assert np.array_equal(logits.argmax(1), expected.argmax(1)), f"{model} {front_door}"
    assert np.mean(expected.argmax(1) == y) >= 0.9  # the rows are real digits, not noise


def assert_on_gpu(gateway: GpuGateway, model: str, provider: str) -> None:
    loaded = gateway.loaded_with(model)
    assert loaded["device"] == "cuda:0", loaded
    assert isinstance(loaded["providers"], list) and loaded["providers"][0] == provider, loaded
    with gateway.client() as client:
        metric = f'edgeserve_gateway_model_loaded{{model="{model}",version="1"'
        assert any(
            line.startswith(metric) and 'device="cuda:0"' in line
            for line in client.metrics().splitlines()
        ), f"/metrics shows no {model} on cuda:0"


def test_cuda_execution_provider_answers_like_the_cpu(gpu_gateway, ort_cuda, digits_batch):
    assert_matches_cpu(gpu_gateway, "digits-cloud-cuda", *digits_batch)
    assert_on_gpu(gpu_gateway, "digits-cloud-cuda", CUDA_EP)


def test_tensorrt_execution_provider_answers_like_the_cpu(gpu_gateway, ort_tensorrt, digits_batch):
    assert_matches_cpu(gpu_gateway, "digits-cloud-trt", *digits_batch)
    assert_on_gpu(gpu_gateway, "digits-cloud-trt", TENSORRT_EP)


def test_torch_on_cuda_answers_like_the_cpu(gpu_gateway, torch_cuda, digits_batch):
    assert_matches_cpu(gpu_gateway, "digits-cloud-torch", *digits_batch)
    assert_on_gpu(gpu_gateway, "digits-cloud-torch", "torch.export")


def test_native_tensorrt_plan_built_from_the_reference_model_answers_like_the_cpu(
    gpu_gateway, native_tensorrt, digits_batch
):
    if not (gpu_gateway.repository / "digits-cloud-plan").is_dir():
        pytest.fail("tensorrt is installed but building the plan from the ONNX model failed")
    assert_matches_cpu(gpu_gateway, "digits-cloud-plan", *digits_batch)
    assert gpu_gateway.loaded_with("digits-cloud-plan")["device"] == "cuda:0"


def load_and_answer_s(gateway: GpuGateway, model: str, x: np.ndarray) -> float:
    """Explicit load, then the first answer: the engine is built (or read) by then."""
    started = time.perf_counter()
    gateway.admin("load", model)
    with gateway.client() as client:
        client.infer(model, {"input": x})
    return time.perf_counter() - started


def test_tensorrt_engine_cache_is_written_then_reused_on_reload(
    gpu_gateway, ort_tensorrt, digits_batch, record_figures
):
    model, x = "digits-cloud-trtcache", digits_batch[0]
    cache = gpu_gateway.repository / model / ".trt_cache" / "1"
    first_s = load_and_answer_s(gpu_gateway, model, x)
    engines = {p: p.stat().st_mtime_ns for p in cache.glob("*.engine")}
    assert engines, f"no TensorRT engine in {cache}: {sorted(p.name for p in cache.iterdir())}"
    gpu_gateway.admin("unload", model)
    second_s = load_and_answer_s(gpu_gateway, model, x)
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.engine")} == engines  # read, not rebuilt
    record_figures(
        "tensorrt_engine_cache",
        {"first_load_and_answer_s": first_s, "cached_load_and_answer_s": second_s,
         "engines": [p.name for p in engines]},
    )  # fmt: skip
    assert second_s < first_s


def closed_loop(gateway: GpuGateway, model: str, out: Path, seconds: float = 8.0) -> dict[str, Any]:
    argv = loadgen.command(
        "grpc", gateway.grpc, model, gateway.key, out, concurrency=64, duration=seconds
    )
    subprocess.run(argv, check=True, capture_output=True, timeout=seconds + 120)
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary


def test_batching_throughput_on_the_gpu_beats_the_cpu(
    gpu_gateway, ort_cuda, tmp_path, record_figures
):
    runs = {
        variant: closed_loop(gpu_gateway, f"heavy-{variant}", tmp_path / f"{variant}.json")
        for variant in ("cpu", "cuda")
    }
    ratio = runs["cuda"]["throughput_ok_per_s"] / max(runs["cpu"]["throughput_ok_per_s"], 1e-9)
    record_figures(
        "gpu_vs_cpu_batching",
        {"gpus": gpu_gateway_gpus(), "gpu_over_cpu_throughput": round(ratio, 2),
         **{f"{v}_req_per_s": r["throughput_ok_per_s"] for v, r in runs.items()},
         **{f"{v}_p99_ms": r["latency_ms"]["p99"] for v, r in runs.items()}},
    )  # fmt: skip
    for variant, run in runs.items():
        assert set(run["outcomes"]) == {"ok"}, f"{variant}: {run['outcomes']}"
    assert ratio > 1.0


def gpu_gateway_gpus() -> list[str]:
    from edgeserve.bench.machine import nvidia_gpus

    return nvidia_gpus()
