"""What a 100 MB ONNX model costs as one file and as ``model.onnx`` + ``model.onnx.data``.

The agent serves one-file models only (its hash covers one file) and refuses external
data with the command that merges it; the gateway loads both layouts. This measures
what each choice costs on the same weights: ONNX Runtime's load time and peak memory
(each load in a fresh process, median of ``repeats``), hashing every byte of the model,
the agent's scan for external data references, and the merge the refusal asks for.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LAYERS = 5
WIDTH = 2236  # 5 float32 matrices of 2236 x 2236: 100 MB of weights

# Runs in a fresh interpreter: load once, answer once, report seconds and peak RSS.
LOAD_PROBE = """
import json, sys, time
import numpy as np, onnxruntime as ort
started = time.perf_counter()
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
loaded = time.perf_counter() - started
session.run(None, {"x": np.ones((1, int(sys.argv[2])), np.float32)})
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec.
status = open("/proc/self/status").read().splitlines()
hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
print(json.dumps({"load_s": loaded, "peak_rss_mb": hwm / 1024}))
"""


def build_model(path: Path, external: bool) -> list[Path]:
    """The 100 MB MLP, saved as one file or with its weights in ``<name>.data``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights, nodes, name = [], [], "x"
    for layer in range(LAYERS):
        matrix = (rng.standard_normal((WIDTH, WIDTH)) / WIDTH).astype(np.float32)
        weights.append(numpy_helper.from_array(matrix, f"w{layer}"))
        nodes.append(helper.make_node("MatMul", [name, f"w{layer}"], [f"h{layer}"]))
        name = f"h{layer}"
    graph = helper.make_graph(
        nodes, "mlp100mb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, WIDTH])],
        initializer=weights,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = path.with_name(path.name + ".data")
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=data.name)  # fmt: skip
    return [path, data] if external else [path]


def timed(action: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def load_in_fresh_process(path: Path, repeats: int) -> dict[str, float]:
    runs = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(path), str(WIDTH)],
                              capture_output=True, text=True, check=True, timeout=600)  # fmt: skip
        runs.append(json.loads(done.stdout))
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def sha256_all(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def measure(folder: Path, external: bool, repeats: int) -> dict[str, float]:
    from edgeserve.runtimes.onnx_files import external_data_locations

    path = folder / ("split" if external else "single") / "model.onnx"
    path.parent.mkdir(parents=True)
    files = build_model(path, external)
    figures = load_in_fresh_process(path, repeats)
    figures["megabytes"] = sum(p.stat().st_size for p in files) / 1e6
    figures["sha256_s"] = timed(lambda: sha256_all(files), repeats)
    figures["scan_s"] = timed(lambda: external_data_locations(path), repeats)
    return figures


def merge_seconds(folder: Path) -> float:
    """The refusal's fix: load the split model with its data, save it as one file."""
    import onnx

    source = folder / "split" / "model.onnx"
    started = time.perf_counter()
    onnx.save(onnx.load(str(source)), str(folder / "merged.onnx"), save_as_external_data=False)
    return time.perf_counter() - started


def run_external_data_bench(repeats: int = 3) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        single = measure(folder, external=False, repeats=repeats)
        split = measure(folder, external=True, repeats=repeats)
        merged = merge_seconds(folder)
    print(f"100 MB ONNX model, {LAYERS} MatMul weights; medians of {repeats}, each load in a "
          "fresh process")  # fmt: skip
    print(f"{'':28}{'one file':>12}{'+ .data':>12}{'ratio':>8}")
    for key, label in [("megabytes", "size (MB)"), ("load_s", "ORT load (s)"),
                       ("peak_rss_mb", "peak RSS after 1 run (MB)"), ("sha256_s", "sha256 (s)"),
                       ("scan_s", "external-data scan (s)")]:  # fmt: skip
        ratio = split[key] / single[key] if single[key] else float("nan")
        print(f"{label:28}{single[key]:>12.4f}{split[key]:>12.4f}{ratio:>8.2f}")
    print(f"merge into one file (the agent's fix): {merged:.2f} s")
    return {"single": single, "external": split, "merge_s": merged}
