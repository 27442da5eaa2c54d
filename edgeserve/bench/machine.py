"""What a benchmark report ran on: CPU, memory, OS, libraries, GPU and the source revision.

Every probe is best-effort and read-only: a missing ``nvidia-smi``, a tree that is not a
git checkout or a library that is not installed gives ``None`` (shown as "none" or
"unknown"), never an error, because the report must still say what it *could* find.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["MachineInfo", "collect_machine_info"]

# The source tree this package was imported from (the repository root in a checkout).
SOURCE_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class MachineInfo:
    cpu_model: str | None
    logical_cpus: int | None
    memory_gib: float | None
    os: str
    kernel: str
    python: str
    onnxruntime: str | None
    onnxruntime_providers: list[str]
    torch: str | None
    torch_cuda: str | None  # "available (N devices)" / "not available"; None without torch
    gpus: list[str]  # one line per GPU from nvidia-smi; empty without one
    git_commit: str | None
    git_dirty: bool | None
    date: str
    load_average_1m: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_machine_info(source_root: Path = SOURCE_ROOT) -> MachineInfo:
    """Probe this machine now. Imports torch only if it is installed (it takes a second)."""
    commit, dirty = git_revision(source_root)
    ort_version, providers = _onnxruntime()
    torch_version, torch_cuda = _torch()
    return MachineInfo(
        cpu_model=cpu_model(),
        logical_cpus=os.cpu_count(),
        memory_gib=memory_gib(),
        os=_os_name(),
        kernel=f"{platform.system()} {platform.release()} {platform.machine()}",
        python=platform.python_version(),
        onnxruntime=ort_version,
        onnxruntime_providers=providers,
        torch=torch_version,
        torch_cuda=torch_cuda,
        gpus=nvidia_gpus(),
        git_commit=commit,
        git_dirty=dirty,
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        load_average_1m=round(os.getloadavg()[0], 2),
    )


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):  # x86, then ARM boards
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def memory_gib(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)  # the kernel counts kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _os_name(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        for line in os_release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _onnxruntime() -> tuple[str | None, list[str]]:
    if importlib.util.find_spec("onnxruntime") is None:
        return None, []
    import onnxruntime as ort

    return str(ort.__version__), list(ort.get_available_providers())


def _torch() -> tuple[str | None, str | None]:
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None, None
    import torch

    if torch.cuda.is_available():
        return version, f"available ({torch.cuda.device_count()} devices)"
    return version, "not available"


def nvidia_gpus() -> list[str]:
    """``name, memory, driver`` per GPU, as nvidia-smi reports them; [] without it."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = "--query-gpu=name,memory.total,driver_version"
    try:
        done = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def git_revision(root: Path) -> tuple[str | None, bool | None]:
    """(commit, has uncommitted changes) of the checkout at ``root``; (None, None) if none."""
    if shutil.which("git") is None or not (root / ".git").exists():
        return None, None
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout
