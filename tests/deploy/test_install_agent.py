"""deploy/install-agent.sh, run for real: a system user, folders, a venv, the unit, removal.

The root-only tests install once per module into temporary folders under a unique user
name (``--no-start``: systemd is not PID 1 in CI) and end by purging it all again.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig
from edgeserve.broker import BrokerSetup
from edgeserve.processes import free_port
from edgeserve.security.pki import ensure_dev_pki
from edgeserve.security.signing import PUBLIC_NAME, ensure_operator_key
from edgeserve.settings import load_settings
from sync.enrollment import issue_bundle

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "install-agent.sh"
UNIT = "edgeserve-agent.service"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="installing creates a system user: needs root and useradd",
)


@dataclass
class Installation:
    user: str
    prefix: Path
    config_dir: Path
    unit_dir: Path
    state_dir: Path
    source: Path

    def options(self) -> list[str]:
        return [
            "--prefix", str(self.prefix), "--config-dir", str(self.config_dir),
            "--unit-dir", str(self.unit_dir), "--state-dir", str(self.state_dir),
            "--user", self.user,
        ]  # fmt: skip

    def run(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return _script(command, *args, *self.options())


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=240)


def _owner(path: Path) -> tuple[str, str, int]:
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    return pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name, mode


def _package_source(destination: Path) -> Path:
    """What a source install needs, copied: pip builds in the source tree it is given."""
    destination.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, destination / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("edgeserve", "edge_agent", "cloud_gateway", "sync", "models"):
        shutil.copytree(REPO / package, destination / package, ignore=ignore)
    return destination


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("installing creates a system user: needs root and useradd")
    root = tmp_path_factory.mktemp("install")
    installed = Installation(
        user=f"es-test-{secrets.token_hex(4)}",
        prefix=root / "opt-edgeserve",
        config_dir=root / "etc-edgeserve",
        unit_dir=root / "units",
        state_dir=root / "state",
        source=_package_source(root / "src"),
    )
    result = installed.run(
        "install", "--device-id", "dev-42", "--source", str(installed.source),
        "--python", sys.executable, "--no-start",
    )  # fmt: skip
    try:
        assert result.returncode == 0, result.stderr
        yield installed
    finally:
        installed.run("uninstall", "--purge")


@needs_root
def test_install_creates_a_system_user_that_cannot_log_in(installation: Installation) -> None:
    account = pwd.getpwnam(installation.user)
    assert account.pw_uid < 1000  # a system account
    assert account.pw_shell.endswith("nologin")
    assert account.pw_dir == "/nonexistent"
    assert grp.getgrgid(account.pw_gid).gr_name == installation.user


@needs_root
def test_config_is_root_owned_and_only_the_secrets_belong_to_the_agent(
    installation: Installation,
) -> None:
    config, user = installation.config_dir, installation.user
    assert _owner(config) == ("root", user, 0o750)
    assert _owner(config / "device.key") == (user, user, 0o600)
    assert _owner(config / "agent.toml") == ("root", user, 0o640)
    assert load_settings(AgentConfig, config / "agent.toml").device_id == "dev-42"


@needs_root
def test_the_venv_runs_the_installed_cli(installation: Installation) -> None:
    result = subprocess.run(
        [str(installation.prefix / "bin" / "edgeserve"), "agent", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "enroll-request" in result.stdout


@needs_root
def test_the_unit_is_rendered_for_this_installation_and_verifies(
    installation: Installation,
) -> None:
    unit = installation.unit_dir / UNIT
    lines = unit.read_text().splitlines()
    executable = installation.prefix / "bin" / "edgeserve"
    config = installation.config_dir / "agent.toml"
    assert f"ExecStart={executable} agent run --config {config}" in lines
    assert f"User={installation.user}" in lines
    assert f"Group={installation.user}" in lines
    assert _owner(unit)[2] == 0o644
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
        )
        assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")


@needs_root
def test_reinstalling_upgrades_in_place_and_keeps_the_key(installation: Installation) -> None:
    key = (installation.config_dir / "device.key").read_bytes()
    result = installation.run(
        "install", "--device-id", "dev-42", "--source", str(installation.source),
        "--python", sys.executable, "--no-start",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (installation.config_dir / "device.key").read_bytes() == key


@needs_root
def test_reinstalling_a_rebuilt_wheel_of_the_same_version_replaces_the_code(
    installation: Installation, tmp_path: Path
) -> None:
    source = _package_source(tmp_path / "src")
    marker = f"# rebuilt {secrets.token_hex(8)}\n"
    init = source / "edge_agent" / "__init__.py"
    init.write_text(init.read_text() + marker)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheels"), str(source)],
        check=True, capture_output=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheels").glob("edgeserve-*.whl")
    result = installation.run(
        "install", "--device-id", "dev-42", "--wheel", str(wheel),
        "--python", sys.executable, "--no-start",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (installed,) = installation.prefix.glob("lib/python3*/site-packages/edge_agent/__init__.py")
    assert installed.read_text().endswith(marker)


@needs_root
def test_a_bundle_finishes_the_enrollment_later(installation: Installation, tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path / "pki", devices=[])
    setup = BrokerSetup.create(tmp_path / "broker", pki, free_port(), [], ["edgeserve-sync"])
    ensure_operator_key(tmp_path / "keys")
    csr = (installation.config_dir / "device.csr").read_bytes()
    bundle = issue_bundle(setup, csr, tmp_path / "keys" / PUBLIC_NAME)
    bundle.write(tmp_path / "dev-42.bundle.json")

    result = installation.run("enroll", "--bundle", str(tmp_path / "dev-42.bundle.json"))
    assert result.returncode == 0, result.stderr
    config = load_settings(AgentConfig, installation.config_dir / "agent.toml")
    assert config.sync_broker == f"127.0.0.1:{setup.port}"
    user = installation.user
    assert _owner(installation.config_dir / "broker.password") == (user, user, 0o600)
    assert _owner(installation.config_dir / "device.pem")[:2] == ("root", user)


@needs_root
def test_uninstall_purge_removes_user_venv_config_state_and_unit(
    installation: Installation,
) -> None:
    installation.state_dir.mkdir(exist_ok=True)  # as systemd's StateDirectory= would
    result = installation.run("uninstall", "--purge")
    assert result.returncode == 0, result.stderr
    for path in (
        installation.prefix,
        installation.config_dir,
        installation.state_dir,
        installation.unit_dir / UNIT,
    ):
        assert not path.exists(), path
    with pytest.raises(KeyError):
        pwd.getpwnam(installation.user)
    with pytest.raises(KeyError):
        grp.getgrnam(installation.user)


# -- what needs no root -------------------------------------------------------------------


def test_the_script_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("prefix", ["/", "/etc", "relative/path", "/opt/with space"])
def test_unsafe_paths_are_refused_before_anything_happens(prefix: str) -> None:
    result = _script("uninstall", "--purge", "--prefix", prefix)
    assert result.returncode == 1
    assert "--prefix" in result.stderr


def test_install_needs_a_device_id_and_root() -> None:
    result = _script("install", "--no-start")
    assert result.returncode == 1
    expected = "run as root" if os.geteuid() != 0 else "install needs --device-id"
    assert expected in result.stderr


def test_extras_naming_both_onnx_runtimes_are_refused() -> None:
    result = _script("render-unit", "--extras", "edge,cpu,gpu")
    assert result.returncode == 1
    assert "both cpu and gpu" in result.stderr


def test_extras_that_are_not_a_plain_list_are_refused() -> None:
    result = _script("render-unit", "--extras", "edge]; rm -rf /")
    assert result.returncode == 1
    assert "--extras" in result.stderr
