"""The contenders of ``edgeserve bench peers``, each a real process on loopback.

``gateway``: ``edgeserve gateway run`` on the gateway benchmark's temporary repository
(``gateway_harness``), both models loaded before any load; requests carry the ``bench``
tenant's API key. ``naive`` and ``pytriton``: the programs in ``peers_servers``; PyTriton
runs from its own Python 3.13 venv under ``~/.cache/edgeserve-bench``, created on first
use. A contender that cannot start is skipped with its reason, never faked.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edgeserve.bench import peers_servers
from edgeserve.bench.gateway_harness import MODELS, running_gateway
from edgeserve.processes import ChildProcess, ServiceFailed, ServiceProcess

PYTRITON_VENV = Path.home() / ".cache" / "edgeserve-bench" / "pytriton-venv"
PYTRITON_PACKAGES = ("nvidia-pytriton", "onnxruntime", "numpy")
SERVERS_PROGRAM = Path(peers_servers.__file__)


@dataclass
class Contender:
    """A running server: its host:port per transport and the protocols it speaks."""

    name: str
    addresses: dict[str, str]
    protocols: tuple[str, ...]
    process: ChildProcess
    log: Path
    versions: dict[str, str] = field(default_factory=dict)

    def address(self, protocol: str) -> str:
        return self.addresses["grpc" if protocol == "grpc" else "http"]

    def exit_note(self) -> str | None:
        """None while it runs; once it has exited, the end of its log (the folder is temporary)."""
        if self.process.running:
            return None
        tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
        return f"{self.name} exited; its log ends:\n{tail}"


@dataclass
class Lineup:
    """Who runs, who was skipped or exited and why, and the API key every request carries."""

    contenders: list[Contender] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    exited: dict[str, str] = field(default_factory=dict)
    key: str = "unused"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _model_args(artifacts: dict[str, Path]) -> list[str]:
    return [arg for model in MODELS for arg in ("--model", f"{model}={artifacts[model]}")]


def _gateway(stack: ExitStack, work: Path, lineup: Lineup, workers: int = 1) -> Contender:
    name = "gateway" if workers == 1 else f"gateway-{workers}w"
    # Every gateway reads the first one's tenants, so one API key serves the whole lineup.
    shared = {"tenants_db": str(work / "state-peers" / "tenants.db")} if workers > 1 else {}
    gateway = stack.enter_context(
        running_gateway(work, name.removeprefix("gateway").lstrip("-") or "peers",
                        workers=str(workers), **shared)
    )  # fmt: skip
    if workers > 1:
        gateway.keys["bench"] = lineup.key  # the first gateway's tenants are the ones read
    for model in MODELS:  # loaded before any timing, as a warm production gateway would be
        status, body = gateway.call("POST", f"/v2/repository/models/{model}/load")
        if status != 200:
            raise RuntimeError(f"loading {model} answered {status}: {body[:200]!r}")
        deadline = time.monotonic() + 60
        while gateway.call("GET", f"/v2/models/{model}/ready")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{model} not ready after 60 s")
            time.sleep(0.01)
    if workers == 1:
        lineup.key = gateway.keys["bench"]
    addresses = {t: gateway.address(t) for t in ("http", "grpc")}
    protocols = ("rest-json", "rest-binary", "grpc")
    return Contender(name, addresses, protocols, gateway.process, gateway.log)


def _start(
    stack: ExitStack, argv: list[str], work: Path, name: str, timeout: float
) -> ServiceProcess:
    process = ServiceProcess(argv, work / f"{name}.port", log_file=work / f"{name}.log")
    try:
        process.start(timeout)
    except ServiceFailed as exc:
        log = (work / f"{name}.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{exc}; its log ends:\n{log}") from exc
    stack.callback(process.stop)
    return process


def _naive(stack: ExitStack, work: Path, artifacts: dict[str, Path]) -> Contender:
    argv = [sys.executable, "-I", str(SERVERS_PROGRAM), "naive", *_model_args(artifacts)]
    argv += ["--port-file", str(work / "naive.port")]
    process = _start(stack, argv, work, "naive", timeout=60)
    address = {"http": f"127.0.0.1:{process.ports['http']}"}
    return Contender("naive", address, ("rest-json",), process, work / "naive.log")


def _pytriton(
    stack: ExitStack, work: Path, artifacts: dict[str, Path], say: Callable[[str], None]
) -> Contender:
    python = pytriton_python(say)
    ports = {"http": _free_port(), "grpc": _free_port(), "metrics": _free_port()}
    argv = [str(python), "-I", str(SERVERS_PROGRAM), "pytriton", *_model_args(artifacts)]
    argv += ["--port-file", str(work / "pytriton.port"), "--ports", json.dumps(ports)]
    process = _start(stack, argv, work, "pytriton", timeout=180)
    addresses = {t: f"127.0.0.1:{ports[t]}" for t in ("http", "grpc")}
    versions = _versions(python, ("nvidia-pytriton", "onnxruntime"))
    protocols = ("rest-json", "rest-binary", "grpc")
    return Contender("pytriton", addresses, protocols, process, work / "pytriton.log", versions)


@contextmanager
def running_contenders(
    work: Path, artifacts: dict[str, Path], say: Callable[[str], None]
) -> Iterator[Lineup]:
    """Start every contender that can start; stop them all on exit."""
    lineup = Lineup()
    with ExitStack() as stack:
        starters: dict[str, Callable[[], Contender]] = {
            "gateway": lambda: _gateway(stack, work, lineup),
            "gateway-2w": lambda: _gateway(stack, work, lineup, workers=2),
            "naive": lambda: _naive(stack, work, artifacts),
            "pytriton": lambda: _pytriton(stack, work, artifacts, say),
        }
        for name, start in starters.items():
            say(f"starting {name}")
            try:
                lineup.contenders.append(start())
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                lineup.skipped[name] = str(exc)
                say(f"[yellow]skipping {name}: {exc}[/yellow]")
        yield lineup


# -- PyTriton's own venv --------------------------------------------------------------------


def pytriton_python(say: Callable[[str], None]) -> Path:
    """The venv's interpreter, creating the venv first if PyTriton does not import there."""
    python = PYTRITON_VENV / "bin" / "python"
    if python.exists() and _imports(python):
        return python
    base = python313()
    if base is None:
        raise RuntimeError(
            "PyTriton needs Python 3.13 (its stub fails on 3.11.7): found none under "
            "`pyenv root`/versions/3.13.* nor a working python3.13 on PATH"
        )
    say(f"creating the PyTriton venv {PYTRITON_VENV} with {base} (once; about 5 minutes)")
    _run([str(base), "-m", "venv", "--clear", str(PYTRITON_VENV)], 300)
    _run([str(python), "-m", "pip", "install", "--quiet", *PYTRITON_PACKAGES], 1800)
    if not _imports(python):
        raise RuntimeError(f"PyTriton does not import in {PYTRITON_VENV} after installing")
    return python


def _run(argv: list[str], timeout: float) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed: {(done.stderr or done.stdout)[-800:]}")


def _imports(python: Path) -> bool:
    probe = "import pytriton.triton, onnxruntime, numpy"
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def python313() -> Path | None:
    """Python 3.13 from pyenv's versions (its shim refuses without a version set), else PATH."""
    candidates: list[Path] = []
    if pyenv := shutil.which("pyenv"):
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
        found = Path(root).glob("versions/3.13*/bin/python3") if root else []
        candidates += sorted(found, key=_version_key, reverse=True)
    if on_path := shutil.which("python3.13"):
        candidates.append(Path(on_path))
    for candidate in candidates:
        if subprocess.run([str(candidate), "--version"], capture_output=True).returncode == 0:
            return candidate
    return None


def _version_key(python: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", python.parent.parent.name))


def _versions(python: Path, packages: tuple[str, ...]) -> dict[str, str]:
    code = "import importlib.metadata as m, sys; print(*(m.version(p) for p in sys.argv[1:]))"
    done = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True)
    names = [f"{p} (pytriton venv)" for p in packages]
    versions = dict(zip(names, done.stdout.split(), strict=False))
    return {"python (pytriton venv)": _python_version(python), **versions}


def _python_version(python: Path) -> str:
    done = subprocess.run([str(python), "--version"], capture_output=True, text=True)
    return done.stdout.strip().removeprefix("Python ")
