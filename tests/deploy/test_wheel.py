"""The wheel a user gets from ``pip install .`` (not editable): the four tiers and the
shared package as top-level packages, with the committed artifacts the demo starts on.

Built with the project's own build backend, installed into a fresh virtual environment,
and used from a folder outside the repository so that nothing can come from the source
tree. Its dependencies come from the test environment's site-packages, added as a plain
path after the new environment's own (so that environment's editable-install hook is
not run and every edgeserve module must come from the wheel); nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO

PACKAGES = {"edgeserve", "edge_agent", "cloud_gateway", "sync", "models"}
ARTIFACTS = [path.name for path in sorted((REPO / "models" / "artifacts").iterdir())]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(REPO)],
        check=True, capture_output=True, timeout=300, cwd=out,
    )  # fmt: skip
    (found,) = out.glob("edgeserve-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)  # fmt: skip
    python = venv / "bin" / "python"
    (site_packages,) = (venv / "lib").glob("python3*/site-packages")
    dependencies = next(p for p in map(Path, sys.path) if p.name == "site-packages")
    (site_packages / "dependencies.pth").write_text(f"{dependencies}\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", "--ignore-installed", str(wheel)],
        check=True, capture_output=True, timeout=300, cwd=venv,
    )  # fmt: skip
    return python


def test_the_wheel_holds_the_five_packages_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == PACKAGES


def test_the_committed_artifacts_ship_in_the_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert len(ARTIFACTS) >= 8
    assert {f"models/artifacts/{name}" for name in ARTIFACTS} <= names
    assert "edgeserve/wire/proto/grpc_service.proto" in names
    assert {f"{package}/py.typed" for package in PACKAGES} <= names


def test_the_installed_wheel_finds_its_artifacts_outside_the_source_tree(
    installed: Path, tmp_path: Path
) -> None:
    probe = (
        "import json, edge_agent, cloud_gateway, sync, models\n"
        "from edgeserve.artifacts import packaged_artifacts\n"
        "from edgeserve.wire.model_card import ModelCard\n"
        "folder = packaged_artifacts()\n"
        "card = ModelCard.load(folder / 'digits-edge.card.json')\n"
        "print(json.dumps({'folder': str(folder), 'tiers': [m.__file__ for m in "
        "(edge_agent, cloud_gateway, sync, models)], 'model': card.name}))\n"
    )
    result = subprocess.run(
        [str(installed), "-c", probe], capture_output=True, text=True, timeout=60,
        cwd=tmp_path, check=True,
    )  # fmt: skip
    import json

    found = json.loads(result.stdout)
    venv = installed.parent.parent
    assert Path(found["folder"]).is_relative_to(venv)
    assert all(Path(path).is_relative_to(venv) for path in found["tiers"])
    assert found["model"] == "digits-edge"


def test_the_installed_command_runs(installed: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(installed.parent / "edgeserve"), "demo", "--help"], capture_output=True,
        text=True, timeout=60, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout.lower()
