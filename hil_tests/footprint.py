"""Installed size of each documented extras combination, on this host and on arm64.

``python -m hil_tests.footprint [--arm64]`` installs a wheel of this tree with each
combination into a fresh venv (from the package index, as a user's ``pip install``
would, isolated from this machine's pip configuration) and prints the megabytes and
packages each adds to an empty venv. ``--arm64`` does the same inside the cached
emulated arm64 root (``hil_tests/emulated_arm64.py``; slow: pip runs under qemu).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hil_tests import emulated_arm64 as arm

EDGE_COMBINATIONS = ["edge,cpu", "edge,cpu,fleet", "edge,cpu,escalation,fleet",
                     "edge,cpu,escalation,fleet,tflite"]  # fmt: skip
HOST_COMBINATIONS = ["", *EDGE_COMBINATIONS, "cloud,cpu", "sync,cpu"]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def pip_args(wheel: str, extras: str) -> list[str]:
    cert = [f"--cert={os.environ['PIP_CERT']}"] if os.environ.get("PIP_CERT") else []
    target = f"{wheel}[{extras}]" if extras else wheel
    return ["-m", "pip", "install", "--isolated", *cert, "--quiet", "--disable-pip-version-check",
            "--index-url",
            "https://pypi.org/simple", target]  # fmt: skip


def host_footprint(wheel: Path, extras: str, scratch: Path) -> tuple[int, int]:
    """(bytes, packages) that ``wheel[extras]`` adds to an empty venv on this host."""
    venv = scratch / f"venv-{extras or 'core'}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    empty = folder_bytes(venv)
    subprocess.run([str(venv / "bin" / "python"), *pip_args(str(wheel), extras)], check=True)
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    size = folder_bytes(venv) - empty
    shutil.rmtree(venv)
    return size, len(listed.stdout.split()) - 2  # pip and setuptools came with the venv


def arm64_footprint(wheel: Path, extras: str) -> tuple[int, int]:
    """The same inside the emulated arm64 root (Debian's Python 3.11)."""
    venv = f"/tmp/footprint-{extras or 'core'}"
    inside = f"{arm.SOURCE}/wheels/{wheel.name}"
    (arm.ROOT / inside.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(wheel, arm.ROOT / inside.lstrip("/"))
    shutil.rmtree(arm.ROOT / venv.lstrip("/"), ignore_errors=True)
    done = arm.run_in_root(["python3", "-m", "venv", venv], timeout=600)
    assert done.returncode == 0, done.stderr
    empty = folder_bytes(arm.ROOT / venv.lstrip("/"))
    done = arm.run_in_root([f"{venv}/bin/python", *pip_args(inside, extras)], timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = arm.run_in_root([f"{venv}/bin/python", "-m", "pip", "list", "--format=freeze"], 600)
    size = folder_bytes(arm.ROOT / venv.lstrip("/")) - empty
    shutil.rmtree(arm.ROOT / venv.lstrip("/"))
    return size, len(listed.stdout.split()) - 2


def main(argv: list[str]) -> None:
    on_arm = argv == ["--arm64"]
    if on_arm and arm.missing():
        raise SystemExit(arm.missing())
    held = arm.exclusive() if on_arm else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as scratch, held:
        wheel = arm.build_wheel(Path(scratch))
        combinations = EDGE_COMBINATIONS if on_arm else HOST_COMBINATIONS
        where = "aarch64 (emulated)" if on_arm else os.uname().machine
        print(f"installed size over an empty venv, {where}, Python 3.11")
        for extras in combinations:
            if on_arm:
                size, packages = arm64_footprint(wheel, extras)
            else:
                size, packages = host_footprint(wheel, extras, Path(scratch))
            print(f"  [{extras or 'core'}]: {size / 1e6:.0f} MB, {packages} packages", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
