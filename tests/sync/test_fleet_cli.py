"""``edgeserve fleet`` as an operator's script uses it: JSON, whole tables, no wasted upload.

One real sync service (and broker) for the module; the CLI runs as a subprocess against
its admin API, exactly as from a shell.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeserve.artifacts import packaged_artifacts
from edgeserve.broker import find_mosquitto
from edgeserve.eval.fleet import FleetStack, start_fleet
from edgeserve.wire.errors import InvalidInput, UpdateRefused
from edgeserve.wire.model_card import CARD_SUFFIX, ModelCard, file_sha256
from sync.admin_client import card_for_upload

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed"),
]
MODEL = "digits-edge"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetStack]:
    stack = start_fleet(tmp_path_factory.mktemp("fleet"), [])  # registers digits-edge v1
    try:
        yield stack
    finally:
        stack.stop()


def fleet(stack: FleetStack, *args: str) -> subprocess.CompletedProcess[str]:
    """``edgeserve fleet ARGS`` with stdout a pipe, as in ``| jq`` or ``| grep``."""
    token_file = stack.sync_state / "admin.token"
    command = ["fleet", "--url", stack.admin_url, "--token-file", str(token_file), *args]
    return subprocess.run(
        [sys.executable, "-m", "edgeserve", *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def packaged_v1() -> tuple[Path, ModelCard]:
    card = ModelCard.load(packaged_artifacts() / f"{MODEL}{CARD_SUFFIX}")
    return packaged_artifacts() / card.file, card


def stored_artifact(stack: FleetStack, sha: str) -> Path:
    return stack.sync_state / "store" / "artifacts" / sha[:2] / sha


def test_json_output_is_what_the_admin_api_answers(stack: FleetStack) -> None:
    for args, fetch in (
        (["devices", "--json"], lambda admin: admin.devices()),
        (["status", "--json"], lambda admin: admin.rollouts()),
        (["telemetry", "--json"], lambda admin: admin.telemetry()),
    ):
        result = fleet(stack, *args)
        assert result.returncode == 0, result.stderr
        with stack.admin() as admin:
            assert json.loads(result.stdout) == fetch(admin)


def test_a_table_in_a_pipe_keeps_every_column_on_one_line(stack: FleetStack) -> None:
    result = fleet(stack, "telemetry")
    assert result.returncode == 0, result.stderr
    (header,) = [line for line in result.stdout.splitlines() if "model" in line]
    assert len(header) > 80 and "agreement" in header and "dropped" in header


def test_pushing_other_bytes_as_an_existing_version_is_refused_before_any_upload(
    stack: FleetStack, tmp_path: Path
) -> None:
    artifact, card = packaged_v1()
    other = tmp_path / card.file
    other.write_bytes(artifact.read_bytes() + b"\0")
    (tmp_path / f"{MODEL}{CARD_SUFFIX}").write_text(card.model_dump_json())
    other_sha = card_for_upload(other, MODEL, card.version, None).sha256

    result = fleet(stack, "push", str(other), "--model", MODEL, "--version", card.version)

    assert result.returncode == 1
    assert "already exists with other bytes" in result.stdout
    assert "upload" not in result.stdout
    assert not stored_artifact(stack, other_sha).exists()


def test_the_admin_api_refuses_an_existing_version_before_reading_the_body(
    stack: FleetStack, tmp_path: Path
) -> None:
    artifact, card = packaged_v1()
    other = tmp_path / "other.onnx"
    other.write_bytes(artifact.read_bytes() + b"\1")
    sha = file_sha256(other)
    upload_card = card.model_copy(update={"sha256": sha, "size_bytes": other.stat().st_size})

    with stack.admin() as admin, pytest.raises(UpdateRefused, match="other bytes"):
        admin.upload(other, upload_card)
    assert not stored_artifact(stack, sha).exists()


def test_an_onnx_model_with_external_data_is_refused_at_upload_with_the_fix(
    stack: FleetStack, tmp_path: Path
) -> None:
    import onnx

    artifact, card = packaged_v1()
    split = tmp_path / "split.onnx"
    onnx.save(onnx.load(str(artifact)), str(split), save_as_external_data=True,
              location="split.onnx.data", size_threshold=0)  # fmt: skip
    sha = file_sha256(split)
    size = split.stat().st_size
    upload_card = card.model_copy(
        update={"version": "7", "file": split.name, "sha256": sha, "size_bytes": size}
    )

    with stack.admin() as admin, pytest.raises(InvalidInput, match=r"split\.onnx\.data.*one file"):
        admin.upload(split, upload_card)
    with stack.admin() as admin:
        assert "7" not in [row["version"] for row in admin.versions(MODEL)]
