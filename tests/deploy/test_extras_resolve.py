"""Every documented combination of extras resolves, from PyPI, to an install that works.

Each combination is resolved as a new user's ``pip install 'edgeserve[...]'`` would be,
for Linux x86-64 and aarch64 wheels (``pip install --dry-run --report``, isolated from
this machine's pip configuration), and the resolved set is checked: no two
distributions that write the same module (``onnxruntime`` and ``onnxruntime-gpu``), no
CUDA wheel where the install is CPU-only, exactly the runtime asked for, and on the
edge none of what the device does not use. Needs the package index (skips without it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import REPO

pytestmark = [pytest.mark.slow]

X86 = "x86_64"
ARM = "aarch64"
MANYLINUX = (17, 24, 27, 28, 31, 34, 35)
INDEX = "https://pypi.org/simple"

# Distributions that install the same import package: two of one family overwrite each other.
SAME_MODULE = {
    "onnxruntime": {"onnxruntime", "onnxruntime-gpu", "onnxruntime-directml",
                    "onnxruntime-openvino", "onnxruntime-qnn", "onnxruntime-training"},
    "cv2": {"opencv-python", "opencv-python-headless", "opencv-contrib-python",
            "opencv-contrib-python-headless"},
}  # fmt: skip
CUDA_PREFIXES = ("nvidia-", "cuda-", "tensorrt", "cupy", "onnxruntime-gpu", "triton")
# The other tiers' stacks, and what uvicorn[standard] adds that an agent never uses
# (python-dotenv stays: pydantic-settings, a core dependency, needs it).
NOT_ON_THE_EDGE = {"torch", "fastapi", "websockets", "watchfiles", "pyyaml", "scikit-learn",
                   "redis", "amqtt"}  # fmt: skip

# (architecture, extras): the combinations the README documents.
COMBINATIONS = [
    (X86, "edge,cpu"),
    (X86, "edge,cpu,escalation,fleet"),
    (X86, "edge,cpu,escalation,fleet,tflite"),
    (X86, "edge,gpu,escalation,fleet"),
    (X86, "cloud,cpu"),
    (X86, "cloud,gpu"),
    (X86, "sync,cpu"),
    (X86, "cloud,sync,cpu"),
    (ARM, "edge,cpu,escalation,fleet,tflite"),
    (ARM, "edge,escalation,fleet"),  # a Jetson: NVIDIA's onnxruntime-gpu wheel added by hand
]


def index_unreachable() -> str | None:
    import ssl

    import httpx

    # pip's own trust: PIP_CERT where this machine sets one (a TLS-inspecting proxy).
    context = ssl.create_default_context(cafile=os.environ.get("PIP_CERT"))
    try:
        httpx.get(f"{INDEX}/pip/", timeout=10, verify=context)
    except httpx.HTTPError as exc:
        return f"the package index {INDEX} is not reachable ({exc})"
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = index_unreachable()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(REPO)],
        check=True, capture_output=True, timeout=300, cwd=out,
    )  # fmt: skip
    (found,) = out.glob("edgeserve-*.whl")
    return found


def resolve(wheel: Path, arch: str, extras: str, report: Path) -> dict[str, str]:
    """{distribution: version} that pip would install for ``wheel[extras]`` on ``arch``."""
    platforms = [f"--platform=manylinux_2_{glibc}_{arch}" for glibc in MANYLINUX]
    cert = [f"--cert={os.environ['PIP_CERT']}"] if os.environ.get("PIP_CERT") else []
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--isolated", *cert, "--index-url", INDEX,
         "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
         "--only-binary=:all:", "--python-version=3.11", *platforms, f"{wheel}[{extras}]"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{arch} [{extras}] does not resolve:\n{done.stderr[-3000:]}"
    document: dict[str, Any] = json.loads(report.read_text())
    return {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in document["install"]
    }


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2])


@pytest.mark.parametrize(
    ("arch", "extras"), COMBINATIONS, ids=[f"{a}-{e}" for a, e in COMBINATIONS]
)
def test_a_documented_combination_resolves_to_an_install_that_cannot_conflict(
    wheel: Path, tmp_path: Path, arch: str, extras: str
) -> None:
    chosen = set(extras.split(","))
    resolved = resolve(wheel, arch, extras, tmp_path / "report.json")
    for module, family in SAME_MODULE.items():
        both = sorted(family & resolved.keys())
        assert len(both) <= 1, f"{both} all write the {module} module"
    cuda = sorted(name for name in resolved if name.startswith(CUDA_PREFIXES))
    if "gpu" not in chosen:
        assert cuda == [], f"a CPU install resolves CUDA wheels: {cuda}"
    runtimes = SAME_MODULE["onnxruntime"] & resolved.keys()
    expected = {"cpu": {"onnxruntime"}, "gpu": {"onnxruntime-gpu"}}
    assert runtimes == set().union(*(expected[c] for c in chosen & expected.keys()))
    for runtime in runtimes:  # the first built for NumPy 2, which numpy>=1.26 admits
        assert version(resolved[runtime]) >= (1, 19)
    if "edge" in chosen:
        assert not NOT_ON_THE_EDGE & resolved.keys()
        assert ("grpcio" in resolved) == ("escalation" in chosen)
        assert ("paho-mqtt" in resolved) == ("fleet" in chosen)
    if "amqtt" in resolved:  # edgeserve/broker/amqtt_server.py overrides its private API
        assert version(resolved["amqtt"]) < (0, 13)
