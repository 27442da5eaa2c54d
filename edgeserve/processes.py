"""Start edgeserve services as real child processes and wait until they are ready.

The demo, ``edgeserve eval`` and the integration tests all run the system as the
operator would: separate processes on loopback ports. A service announces readiness by
writing its bound port to a file, so nobody has to guess a free port or sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO


class ServiceFailed(RuntimeError):
    """A child service exited or did not become ready in time."""


class ChildProcess:
    """A child process with its output in a log file, stopped by SIGTERM or killed."""

    def __init__(
        self, args: list[str], log_file: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.args = args
        self.log_file = log_file
        self.env = {**os.environ, **(env or {})}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ServiceFailed(f"{self.args[0]} was never started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._close_log()
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_file.open("ab")
        output = self._log or subprocess.DEVNULL
        self._proc = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self._proc

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; the exit code."""
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close_log()
        return self._proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash or power cut would; no cleanup runs in the child."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class ServiceProcess(ChildProcess):
    """An edgeserve service that writes its bound port(s) to ``port_file`` when ready."""

    def __init__(
        self,
        args: list[str],
        port_file: Path,
        env: dict[str, str] | None = None,
        log_file: Path | None = None,
    ) -> None:
        super().__init__(args, log_file, env)
        self.port_file = port_file
        self.port: int | None = None
        self.ports: dict[str, int] = {}

    @classmethod
    def edgeserve(
        cls,
        *subcommand: str,
        port_file: Path,
        env: dict[str, str] | None = None,
        log_file: Path | None = None,
    ) -> ServiceProcess:
        """A ``python -m edgeserve ... --port-file PATH`` child with this interpreter."""
        args = [sys.executable, "-m", "edgeserve", *subcommand, "--port-file", str(port_file)]
        return cls(args, port_file, env=env, log_file=log_file)

    def start(self, timeout: float = 60.0) -> int:
        self.port_file.unlink(missing_ok=True)
        proc = self._spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServiceFailed(f"{self.args[3:]} exited with {proc.returncode}")
            if self.port_file.exists():
                return self._read_ports()
            time.sleep(0.02)
        self.kill()
        raise ServiceFailed(f"{self.args[3:]} not ready after {timeout:.0f}s")

    def _read_ports(self) -> int:
        """A service writes its port, or a JSON object of ports with the main one first."""
        document = json.loads(self.port_file.read_text())
        self.ports = document if isinstance(document, dict) else {"main": int(document)}
        self.port = next(iter(self.ports.values()))
        return self.port

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def service_process(
    service: str, workdir: Path, name: str, settings: dict[str, str]
) -> ServiceProcess:
    """``edgeserve <service> run`` as a child, configured by ``EDGESERVE_<SERVICE>_<KEY>``
    variables, writing its ports to ``<workdir>/<name>.port`` and its log beside it."""
    prefix = f"EDGESERVE_{service.upper()}_"
    env = {prefix + key.upper(): value for key, value in settings.items()}
    return ServiceProcess.edgeserve(
        service,
        "run",
        port_file=workdir / f"{name}.port",
        log_file=workdir / f"{name}.log",
        env=env,
    )


def agent_process(workdir: Path, name: str = "agent", **settings: str) -> ServiceProcess:
    """An edge agent on a free loopback port, its state under ``workdir``.

    ``settings`` are agent config keys (``models='["a"]'``, ``cache_entries="0"``...).
    """
    defaults = {"port": "0", "state_dir": str(workdir / f"{name}-state")}
    return service_process("agent", workdir, name, defaults | settings)


def gateway_process(
    workdir: Path, state_dir: Path, name: str = "gateway", **settings: str
) -> ServiceProcess:
    """A gateway with all three listeners on free loopback ports (``.ports``)."""
    defaults = {
        "state_dir": str(state_dir),
        "http_port": "0",
        "grpc_port": "0",
        "grpc_mtls_port": "0",
    }
    return service_process("gateway", workdir, name, defaults | settings)


def sync_process(workdir: Path, name: str = "sync", **settings: str) -> ServiceProcess:
    """The fleet sync service with its admin API on a free loopback port (``.ports["admin"]``).

    ``settings`` are sync config keys (``broker_port``, ``broker_password_file``...).
    """
    defaults = {"admin_port": "0", "state_dir": str(workdir / f"{name}-state")}
    return service_process("sync", workdir, name, defaults | settings)


def free_port() -> int:
    """A loopback port that is free now, for a service that must keep its port on restart."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
