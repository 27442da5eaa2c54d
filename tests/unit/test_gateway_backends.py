"""Gateway backends: real ONNX Runtime and real torch on the CPU, tiny models built here."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cloud_gateway.backends import load_backend
from cloud_gateway.backends.onnxruntime import choose_providers, provider_entries
from cloud_gateway.repository.config import ModelConfig
from edgeserve.wire.errors import InternalError, InvalidInput, Unavailable
from edgeserve.wire.model_card import TensorSpec

FEATURES, CLASSES = 4, 3
RNG = np.random.default_rng(7)
WEIGHT = RNG.standard_normal((CLASSES, FEATURES)).astype(np.float32)
BIAS = RNG.standard_normal(CLASSES).astype(np.float32)


def expected(x: np.ndarray) -> dict[str, np.ndarray]:
    logits = x @ WEIGHT.T + BIAS
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return {"logits": logits, "probabilities": exp / exp.sum(axis=-1, keepdims=True)}


def make_config(backend: str = "onnxruntime", **overrides: object) -> ModelConfig:
    fields: dict[str, object] = {
        "name": "linear",
        "backend": backend,
        "inputs": [TensorSpec(name="x", datatype="FP32", shape=[-1, FEATURES])],
        "outputs": [
            TensorSpec(name="logits", datatype="FP32", shape=[-1, CLASSES]),
            TensorSpec(name="probabilities", datatype="FP32", shape=[-1, CLASSES]),
        ],
        "device": "cpu",
    }
    fields.update(overrides)
    return ModelConfig.model_validate(fields)


def batch(rows: int = 5) -> np.ndarray:
    return RNG.standard_normal((rows, FEATURES)).astype(np.float32)


def assert_matches(outputs: dict[str, np.ndarray], x: np.ndarray) -> None:
    want = expected(x)
    assert sorted(outputs) == sorted(want)
    for name, value in want.items():
        np.testing.assert_allclose(outputs[name], value, rtol=1e-5, atol=1e-5)


def save_onnx(path: Path, nodes: list, outputs: dict[str, list | None], constants: dict) -> None:
    """A float ``x`` of shape [batch, FEATURES] through ``nodes``, as opset 17 ONNX."""
    onnx = pytest.importorskip("onnx")
    helper, float32 = onnx.helper, onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        path.parent.name,
        [helper.make_tensor_value_info("x", float32, ["batch", FEATURES])],
        [helper.make_tensor_value_info(name, float32, dims) for name, dims in outputs.items()],
        initializer=[onnx.numpy_helper.from_array(v, name) for name, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_linear_onnx(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    save_onnx(
        path,
        [
            onnx.helper.make_node("Gemm", ["x", "weight", "bias"], ["logits"], transB=1),
            onnx.helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        {"logits": ["batch", CLASSES], "probabilities": ["batch", CLASSES]},
        {"weight": WEIGHT, "bias": BIAS},
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``linear/1/model.onnx``; torch artifacts are added by the ``torch_versions`` fixture."""
    root = tmp_path_factory.mktemp("repository")
    write_linear_onnx(root / "linear" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def torch_versions(repo: Path) -> dict[str, Path]:
    """The same weights as a torch.export program (``2/model.pt2``) and TorchScript (``3``)."""
    torch = pytest.importorskip("torch")

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(FEATURES, CLASSES)
            with torch.no_grad():
                self.fc.weight.copy_(torch.from_numpy(WEIGHT))
                self.fc.bias.copy_(torch.from_numpy(BIAS))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.fc(x)
            return logits, torch.softmax(logits, dim=-1)

    module = Linear().eval()
    export_dir, script_dir = repo / "linear" / "2", repo / "linear" / "3"
    export_dir.mkdir()
    script_dir.mkdir()
    batch_axis = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        module, (torch.zeros(2, FEATURES),), dynamic_shapes=({0: batch_axis},)
    )
    torch.export.save(program, export_dir / "model.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated
        torch.jit.script(module).save(str(script_dir / "model.pt"))
    return {"torch.export": export_dir, "torchscript": script_dir}


# --- registry -------------------------------------------------------------------------


def test_importing_the_backends_package_imports_neither_torch_nor_tensorrt():
    probe = (
        "import sys, cloud_gateway.backends;"
        "print([m for m in ('torch', 'tensorrt') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_version_folder_without_the_backends_artifact_is_invalid_input(tmp_path: Path):
    with pytest.raises(InvalidInput, match=r"model\.onnx"):
        load_backend(make_config(), tmp_path)


# --- onnxruntime ----------------------------------------------------------------------


def test_onnxruntime_backend_matches_numpy(repo: Path):
    backend = load_backend(make_config(), repo / "linear" / "1")
    x = batch()
    assert_matches(backend.run({"x": x}), x)
    backend.close()


def test_cpu_device_runs_on_the_cpu_execution_provider_only(repo: Path):
    backend = load_backend(make_config(device="cpu"), repo / "linear" / "1")
    assert backend.name == "onnxruntime"
    assert backend.providers == ["CPUExecutionProvider"]
    assert backend.device == "cpu"


def test_auto_device_takes_the_preferred_providers_that_are_available():
    config = make_config(device="auto")
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(config, gpu) == gpu
    assert choose_providers(config, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    only_gpu = make_config(device="auto", providers=["CUDAExecutionProvider"])
    assert choose_providers(only_gpu, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this host has CUDA"
)
def test_cuda_device_without_the_cuda_provider_is_unavailable(repo: Path):
    with pytest.raises(Unavailable, match=r"CUDAExecutionProvider.*'gpu' extra"):
        load_backend(make_config(device="cuda"), repo / "linear" / "1")


def test_tensorrt_provider_caches_engines_beside_the_versions(tmp_path: Path):
    version_dir = tmp_path / "linear" / "1"
    entries = dict(
        provider_entries(["TensorrtExecutionProvider", "CUDAExecutionProvider"], version_dir, True)
    )
    trt = entries["TensorrtExecutionProvider"]
    assert trt["trt_engine_cache_enable"] is True
    assert trt["trt_engine_cache_path"] == str(tmp_path / "linear" / ".trt_cache" / "1")
    assert trt["trt_fp16_enable"] is True
    assert entries["CUDAExecutionProvider"]["device_id"] == 0


def test_onnxruntime_logs_requested_and_used_providers(repo: Path, caplog):
    with caplog.at_level(logging.INFO, logger="cloud_gateway.backends.onnxruntime"):
        load_backend(make_config(device="auto"), repo / "linear" / "1")
    record = next(r for r in caplog.records if r.getMessage() == "onnxruntime session ready")
    assert record.model == "linear"
    assert "CPUExecutionProvider" in record.providers_requested
    assert record.providers_used[-1] == "CPUExecutionProvider"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": np.zeros((1, FEATURES), np.float32), "y": np.zeros(1)}, "no input"),
        ({"images": np.zeros((1, FEATURES), np.float32)}, "no input"),
        ({}, "needs input"),
        ({"x": np.zeros((1, FEATURES), np.float64)}, "float64"),
        ({"x": np.zeros((1, FEATURES + 1), np.float32)}, "shape"),
    ],
    ids=["extra-name", "unknown-name", "missing", "wrong-dtype", "wrong-shape"],
)
def test_bad_inputs_are_invalid_input(repo: Path, inputs, message):
    backend = load_backend(make_config(), repo / "linear" / "1")
    with pytest.raises(InvalidInput, match=message):
        backend.run(inputs)


def test_a_config_output_missing_from_the_graph_is_invalid_input(repo: Path):
    config = make_config(outputs=[TensorSpec(name="scores", datatype="FP32", shape=[-1, 3])])
    with pytest.raises(InvalidInput, match="scores"):
        load_backend(config, repo / "linear" / "1")


def test_memory_estimate_is_the_configured_value_or_twice_the_artifact(repo: Path):
    version = repo / "linear" / "1"
    assert load_backend(make_config(), version).memory_bytes == 2 * (
        (version / "model.onnx").stat().st_size
    )
    configured = make_config(memory_estimate_bytes=123_456)
    assert load_backend(configured, version).memory_bytes == 123_456


def test_run_after_close_is_unavailable(repo: Path):
    backend = load_backend(make_config(), repo / "linear" / "1")
    backend.close()
    with pytest.raises(Unavailable, match="unloaded"):
        backend.run({"x": batch()})


# --- torch ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["torch.export", "torchscript"])
def test_torch_backends_match_onnxruntime_for_the_same_weights(repo, torch_versions, kind):
    backend = load_backend(make_config("torch"), torch_versions[kind])
    reference = load_backend(make_config(), repo / "linear" / "1")
    x = batch(7)
    outputs = backend.run({"x": x})
    assert (backend.name, backend.device, backend.providers) == ("torch", "cpu", [kind])
    for name, value in reference.run({"x": x}).items():
        np.testing.assert_allclose(outputs[name], value, rtol=1e-5, atol=1e-6)


def test_multi_output_results_map_onto_config_output_names_in_order(torch_versions):
    specs = [TensorSpec(name=n, datatype="FP32", shape=[-1, CLASSES]) for n in ("a", "b")]
    renamed = make_config("torch", outputs=specs)
    x = batch()
    outputs = load_backend(renamed, torch_versions["torchscript"]).run({"x": x})
    assert list(outputs) == ["a", "b"]
    np.testing.assert_allclose(outputs["a"], expected(x)["logits"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["b"], expected(x)["probabilities"], rtol=1e-5, atol=1e-6)


def test_a_single_tensor_result_maps_onto_the_one_config_output(tmp_path: Path):
    torch = pytest.importorskip("torch")
    program = torch.export.export(torch.nn.ReLU(), (torch.zeros(2, FEATURES),))
    torch.export.save(program, tmp_path / "model.pt2")
    config = make_config(
        "torch",
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[2, FEATURES])],
        outputs=[TensorSpec(name="relu", datatype="FP32", shape=[2, FEATURES])],
    )
    x = batch(2)
    outputs = load_backend(config, tmp_path).run({"x": x})
    np.testing.assert_array_equal(outputs["relu"], np.maximum(x, 0))


def test_torch_accepts_read_only_inputs(torch_versions):
    x = batch()
    frozen = np.frombuffer(x.tobytes(), dtype=np.float32).reshape(x.shape)
    assert not frozen.flags.writeable
    outputs = load_backend(make_config("torch"), torch_versions["torch.export"]).run({"x": frozen})
    assert_matches(outputs, x)


def test_torch_rejects_a_wrong_feature_axis_before_running(torch_versions):
    backend = load_backend(make_config("torch"), torch_versions["torch.export"])
    with pytest.raises(InvalidInput, match="shape"):
        backend.run({"x": np.zeros((2, FEATURES + 1), np.float32)})


def test_torch_device_cuda_without_a_gpu_is_unavailable(torch_versions):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    with pytest.raises(Unavailable, match="CUDA"):
        load_backend(make_config("torch", device="cuda"), torch_versions["torchscript"])


# --- tensorrt -------------------------------------------------------------------------


def tensorrt_runs_here() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.skipif(tensorrt_runs_here(), reason="TensorRT and a GPU are present")
def test_tensorrt_backend_without_tensorrt_or_gpu_is_unavailable(tmp_path: Path):
    (tmp_path / "model.plan").write_bytes(b"not an engine")
    with pytest.raises(Unavailable, match=r"^TensorRT backend needs the 'gpu' extra"):
        load_backend(make_config("tensorrt"), tmp_path)
    from cloud_gateway.backends.tensorrt import build_engine_from_onnx

    with pytest.raises(Unavailable, match="NVIDIA GPU"):
        build_engine_from_onnx(tmp_path / "model.onnx", tmp_path / "model.plan", max_batch=8)


# --- concurrency ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["onnxruntime", "torch.export", "torchscript"])
def test_eight_threads_running_at_once_each_get_their_own_results(repo, kind, request):
    if kind == "onnxruntime":
        backend = load_backend(make_config(instances=8), repo / "linear" / "1")
    else:
        versions = request.getfixturevalue("torch_versions")
        backend = load_backend(make_config("torch", instances=8), versions[kind])
    batches = [batch(1 + index % 5) for index in range(64)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda x: backend.run({"x": x}), batches))
    for x, outputs in zip(batches, results, strict=True):
        assert_matches(outputs, x)


def test_onnxruntime_runtime_failures_become_internal_error_with_the_cause(tmp_path: Path):
    onnx = pytest.importorskip("onnx")
    reshape = onnx.helper.make_node("Reshape", ["x", "shape"], ["y"])  # 4 never splits by 5
    save_onnx(tmp_path / "model.onnx", [reshape], {"y": None}, {"shape": np.array([-1, 5])})
    config = make_config(outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 5])])
    backend = load_backend(config, tmp_path)
    with pytest.raises(InternalError, match="onnxruntime failed") as caught:
        backend.run({"x": batch(3)})
    assert caught.value.__cause__ is not None
