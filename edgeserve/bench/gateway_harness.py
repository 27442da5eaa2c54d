"""The gateway benchmark's harness: a temporary repository and a gateway process.

``build_repository`` writes each model twice (batched and ``-nobatch``): the reference
``digits-cloud`` CNN and ``heavy``, an FP32 MLP with random weights made with
``onnx.helper``; ``running_gateway`` starts the gateway on it with the benchmark's
tenants and yields a handle that knows its ports and keys.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud_gateway.repository.seed import config_from_card
from edgeserve.artifacts import packaged_artifacts
from edgeserve.bench import loadgen as lg
from edgeserve.processes import ServiceProcess
from edgeserve.wire import oip_rest
from edgeserve.wire.model_card import ModelCard
from edgeserve.wire.tensors import InferRequest, InferTensor

MODELS = ("digits-cloud", "heavy")
QUEUE_DELAY_US = 2000
UNLIMITED = {"rate_per_s": 1e6, "burst": 1e6, "max_in_flight": 10_000}
A_LIMIT = 100.0
TENANTS: dict[str, dict[str, Any]] = {
    "bench": {"allowed_models": ["*"], **UNLIMITED},  # also the admin (loads models)
    "tenant-a": {"allowed_models": ["digits-cloud"], "rate_per_s": A_LIMIT, "burst": A_LIMIT},
    "tenant-b": {"allowed_models": ["digits-cloud"], "rate_per_s": 1000.0, "burst": 1000.0},
}


def build_heavy_mlp(path: Path, hidden: int = 2048, layers: int = 3, seed: int = 0) -> None:
    """An FP32 MLP ``input [N,64] -> logits [N,10]`` with random weights, via onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = [64] + [hidden] * layers + [10]
    nodes, weights, current = [], [], "input"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(dims)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}")]
        weights += [numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{i}")]
        out = "logits" if i == len(dims) - 2 else f"gemm{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out]))
        if out != "logits":
            current = f"relu{i}"
            nodes.append(helper.make_node("Relu", [out], [current]))
    spec = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "heavy",
        [spec("input", TensorProto.FLOAT, ["N", 64])],
        [spec("logits", TensorProto.FLOAT, ["N", 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def build_repository(root: Path) -> dict[str, Path]:
    """``<model>`` and ``<model>-nobatch`` for each of MODELS; each model's artifact."""
    card = ModelCard.load(packaged_artifacts() / "digits-cloud.card.json")
    artifacts = {m: root / m / "1" / "model.onnx" for m in MODELS}
    artifacts["digits-cloud"].parent.mkdir(parents=True)
    artifacts["digits-cloud"].write_bytes((packaged_artifacts() / card.file).read_bytes())
    build_heavy_mlp(artifacts["heavy"])  # same signature as the card: input -> logits
    for model, artifact in artifacts.items():
        for name in (model, f"{model}-nobatch"):
            text = config_from_card(card.model_copy(update={"name": name}), max_batch_size=64)
            text = text.replace("delay_us = 2000", f"delay_us = {QUEUE_DELAY_US}")
            if name != model:
                text = text.replace("[batching]\n", "[batching]\nenabled = false\n")
                (root / name / "1").mkdir(parents=True)
                os.link(artifact, root / name / "1" / "model.onnx")
            (root / name / "config.toml").write_text(text)
    return artifacts


@dataclass
class Gateway:
    process: ServiceProcess
    keys: dict[str, str]
    log: Path
    state_dir: Path

    def address(self, target: str) -> str:
        return f"127.0.0.1:{self.process.ports['grpc' if target == 'grpc' else 'http']}"

    def cpu_s(self) -> float:
        """User + system CPU seconds the gateway process has used (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self.address("http"), timeout=60)
        try:
            headers = {"Authorization": f"Bearer {self.keys['bench']}"}
            connection.request(method, path, body, headers)
            reply = connection.getresponse()
            return reply.status, reply.read()
        finally:
            connection.close()

    def metrics(self) -> dict[tuple[str, str, str], float]:
        """Every sample of /metrics as {(sample name, model label, le label): value}."""
        from prometheus_client.parser import text_string_to_metric_families

        families = text_string_to_metric_families(self.call("GET", "/metrics")[1].decode())
        return {
            (s.name, s.labels.get("model", ""), s.labels.get("le", "")): s.value
            for family in families
            for s in family.samples
        }

    def batch_histogram(self, model: str) -> dict[str, float]:
        """The gateway's cumulative rows-per-batch histogram for one model, plus its mean."""
        samples = {k: v for k, v in self.metrics().items() if k[1] == model}
        result = {
            f"<={k[2]}": v
            for k, v in samples.items()
            if k[0] == "edgeserve_gateway_batch_size_bucket"
        }
        count = samples.get(("edgeserve_gateway_batch_size_count", model, ""), 0.0)
        total = samples.get(("edgeserve_gateway_batch_size_sum", model, ""), 0.0)
        return {**result, "mean": round(total / count, 2) if count else 0.0}

    def log_events(self) -> Counter[str]:
        """How often each log message appeared ('model loaded', 'evicting model', ...)."""
        lines = self.log.read_text().splitlines()
        return Counter(json.loads(line).get("msg") for line in lines if line.startswith("{"))

    def loadgen(
        self, target: str, model: str, out: Path, tenant: str = "bench", **options: Any
    ) -> Any:
        """One loadgen process run to completion: its summary, plus the gateway's CPU."""
        cpu = self.cpu_s()
        argv = lg.command(target, self.address(target), model, self.keys[tenant], out, **options)
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
        result = json.loads(out.read_text())
        cpu_us = (self.cpu_s() - cpu) / max(1, result["requests"]) * 1e6
        return {**result, "gateway_cpu_us_per_request": round(cpu_us, 1)}


@contextmanager
def running_gateway(workdir: Path, tag: str, **env: str) -> Iterator[Gateway]:
    from cloud_gateway.tenancy import TenantStore

    state = workdir / f"state-{tag}"
    state.mkdir()
    store = TenantStore(state / "tenants.db")
    keys = {name: store.add_tenant(name, **fields)[1] for name, fields in TENANTS.items()}
    store.close()
    settings = {f"EDGESERVE_GATEWAY_{k}_PORT": "0" for k in ("HTTP", "GRPC", "GRPC_MTLS")}
    settings["EDGESERVE_GATEWAY_STATE_DIR"] = str(state)
    settings["EDGESERVE_GATEWAY_REPOSITORY"] = str(workdir / "models")
    settings.update({f"EDGESERVE_GATEWAY_{k.upper()}": v for k, v in env.items()})
    log = workdir / f"gateway-{tag}.log"
    port_file = workdir / f"{tag}.port"
    process = ServiceProcess.edgeserve(
        "gateway", "run", port_file=port_file, env=settings, log_file=log
    )
    process.start()
    try:
        yield Gateway(process, keys, log, state)
    finally:
        process.stop()


def infer_ms(gateway: Gateway, model: str) -> tuple[float, int]:
    """One REST JSON inference: (round-trip ms, HTTP status)."""
    row = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    request = InferRequest(model, [InferTensor("input", "FP32", [1, 64], row)])
    body, _ = oip_rest.encode_request(request, binary=False)
    started = time.perf_counter()
    status, _ = gateway.call("POST", f"/v2/models/{model}/infer", body)
    return (time.perf_counter() - started) * 1e3, status


def eviction_budget(artifacts: dict[str, Path]) -> int:
    """The larger model plus half the smaller (estimates are 2x the file): one fits, not both."""
    sizes = sorted(2 * path.stat().st_size for path in artifacts.values())
    return max(sizes[-1] + sizes[0] // 2, 1 << 20)


def repository_lookup_us(root: Path, model: str = "digits-cloud") -> float:
    """What one ``ModelRepository.entry()`` costs on this repository (in-process)."""
    from cloud_gateway.repository.manager import ModelRepository

    with ThreadPoolExecutor(1) as executor:
        repository = ModelRepository(root, 1 << 30, executor)
        started = time.perf_counter()
        for _ in range(50):
            repository.entry(model)
        return (time.perf_counter() - started) / 50 * 1e6
