"""An arm64 Debian root run under qemu-user emulation: the edge agent on ARM without a board.

``python -m hil_tests.emulated_arm64 build`` (as root; Debian's ``debootstrap`` and
``qemu-user-static``) makes the root once and caches it under
``~/.cache/edgeserve-arm64`` (``EDGESERVE_ARM64_CACHE`` moves it): a minimal Debian
bookworm for arm64 with its own Python 3.11, and the agent installed into it by
``deploy/install-agent.sh`` from a wheel of this tree, with aarch64 wheels of every
dependency (onnxruntime, ai-edge-litert, numpy...) from the package index. That first
install is the slow part (tens of minutes under emulation); a test run reinstalls only
edgeserve itself, the way the installer upgrades a device.

Programs in the root run through binfmt_misc: the kernel hands every aarch64 binary to
``qemu-aarch64-static`` (registered with the ``F`` flag, so the root needs no copy of
it), and a process started there is an ordinary host process that ``kill -9`` ends.
Each runs in a mount namespace of its own (``unshare``) with ``/proc``, ``/dev`` and the
test's folders bound in at the same paths, so nothing is left mounted when it exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from edgeserve.bench.machine import SOURCE_ROOT

CACHE = Path(os.environ.get("EDGESERVE_ARM64_CACHE", Path.home() / ".cache" / "edgeserve-arm64"))
ROOT = CACHE / "root"
READY = CACHE / "ready"  # written once the root holds an installed agent
SUITE = "bookworm"  # Python 3.11, as the agent needs
MIRROR = os.environ.get("EDGESERVE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = "python3,python3-venv,python3-pip,ca-certificates,passwd,procps"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's, on the host and in the root
QEMU_ENTRY = BINFMT / "qemu-aarch64"

# What the emulated device installs: one runtime (cpu), TFLite, the fleet client; no
# escalation (grpc), as a device that never asks the cloud would.
EXTRAS = "edge,cpu,tflite,fleet"
PREFIX = "/opt/edgeserve"
SOURCE = "/srv/edgeserve"  # where the installer and the wheel are copied inside the root
DEVICE_ID = "arm64-emulated"
BUILD_COMMAND = "sudo python -m hil_tests.emulated_arm64 build"
# The host's variables that would point the root's Python at the host's files.
HOST_ONLY = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")


@contextlib.contextmanager
def exclusive(timeout: float = 3600.0) -> Iterator[None]:
    """Hold the root alone: two test runs at once would install into one venv together."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{CACHE} stayed locked by another run") from None
                time.sleep(1.0)  # another run holds the root for minutes: poll slowly
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def missing() -> str | None:
    """Why the emulated arm64 tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the emulated arm64 root needs root (chroot, mounts)"
    if shutil.which("unshare") is None or shutil.which("chroot") is None:
        return "unshare and chroot (util-linux, coreutils) are needed"
    if not READY.is_file():
        return f"no cached arm64 root in {CACHE} (build it once: {BUILD_COMMAND})"
    if not QEMU_ENTRY.is_file() and not register_binfmt():
        return "qemu-aarch64 is not registered with binfmt_misc (apt-get install qemu-user-static)"
    return None


def register_binfmt() -> bool:
    """Mount binfmt_misc and enable qemu-aarch64 (what the Debian package registers)."""
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=False)
    if shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False,
                       capture_output=True)  # fmt: skip
    return QEMU_ENTRY.is_file() and "enabled" in QEMU_ENTRY.read_text()


def in_root(argv: list[str], binds: tuple[Path, ...] = ()) -> list[str]:
    """``argv`` run inside the root, in a private mount namespace with ``binds`` mounted
    at their own paths; the command's pid is the program's own (``exec`` all the way)."""
    # No /sys: onnxruntime's cpuinfo then reads the host's x86 CPU there and crashes
    # under qemu; without it, it warns that it cannot list the CPUs and runs.
    mounts = [f"mount -t proc proc {ROOT}/proc", f"mount --rbind /dev {ROOT}/dev"]
    for folder in binds:
        target = ROOT / folder.relative_to("/")
        mounts.append(f"mkdir -p {target} && mount --bind {folder} {target}")
    script = " && ".join(mounts) + f' && exec chroot {ROOT} "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


def root_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in HOST_ONLY and not k.startswith("PIP_")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    # pip trusts its own certifi bundle; the root's system one is the host's (trust_host_cas).
    env["PIP_CERT"] = CA_BUNDLE
    return env | (extra or {})


def trust_host_cas() -> None:
    """The root trusts what the host trusts: a host behind a TLS-inspecting proxy reaches
    the package index only with the proxy's CA, which the host's bundle carries."""
    host = Path(CA_BUNDLE)
    if host.is_file():
        shutil.copy2(host, ROOT / CA_BUNDLE.lstrip("/"))


def run_in_root(
    argv: list[str], timeout: float, binds: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(in_root(argv, binds), env=root_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def build_wheel(out: Path) -> Path:
    """edgeserve's wheel (pure Python) built on the host from this tree."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(SOURCE_ROOT)],
        check=True, capture_output=True, timeout=300, cwd=out,
    )  # fmt: skip
    (wheel,) = out.glob("edgeserve-*.whl")
    return wheel


def install_agent(wheel: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``install-agent.sh install`` inside the root, from ``wheel``, as on a device."""
    source = ROOT / SOURCE.lstrip("/")
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(SOURCE_ROOT / "deploy", source / "deploy", ignore=shutil.ignore_patterns(
        "helm", "grafana", "docker"))  # fmt: skip
    (source / "wheels").mkdir(parents=True)
    shutil.copy2(wheel, source / "wheels" / wheel.name)
    return run_in_root(
        ["bash", f"{SOURCE}/deploy/install-agent.sh", "install", "--device-id", DEVICE_ID,
         "--wheel", f"{SOURCE}/wheels/{wheel.name}", "--extras", EXTRAS, "--no-start"],
        timeout,
    )  # fmt: skip


def installed_bytes() -> int:
    """Bytes the agent's venv takes in the root (Python itself is the system's)."""
    return sum(p.stat().st_size for p in (ROOT / PREFIX.lstrip("/")).rglob("*") if p.is_file()
               and not p.is_symlink())  # fmt: skip


def build() -> None:
    """Make (or finish making) the cached root: debootstrap, then the agent's install."""
    if os.geteuid() != 0:
        raise SystemExit("run as root: debootstrap, chroot and binfmt_misc need it")
    for tool, package in (("debootstrap", "debootstrap"), ("qemu-aarch64-static",
                                                           "qemu-user-static")):  # fmt: skip
        if shutil.which(tool) is None:
            subprocess.run(["apt-get", "install", "-y", "-qq", package, "binfmt-support"],
                           check=True)  # fmt: skip
    if not register_binfmt():
        raise SystemExit("could not register qemu-aarch64 with binfmt_misc")
    if not (ROOT / "usr" / "bin" / "python3").exists():
        partial = CACHE / "root-partial"
        shutil.rmtree(partial, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase",
                        f"--include={PACKAGES}", SUITE, str(partial), MIRROR],
                       check=True)  # fmt: skip
        partial.rename(ROOT)
    trust_host_cas()
    wheels = CACHE / "wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    done = install_agent(build_wheel(wheels), timeout=4 * 3600)
    print(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"install-agent.sh failed in the arm64 root ({done.returncode})")
    READY.write_text(f"{SUITE} arm64, {EXTRAS}\n")
    print(f"arm64 root ready in {ROOT}; the agent's venv is {installed_bytes() / 1e6:.0f} MB")


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        raise SystemExit("usage: python -m hil_tests.emulated_arm64 build")
    build()
