"""The agent's disk fills up: it keeps answering, counts what it cannot keep, and an
update fails cleanly; once space is freed a retried update applies.

The agent's state folder is a small tmpfs (root: ``mount -t tmpfs -o size=...``) that the
test fills with a ballast file until the kernel answers ENOSPC.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeserve.client import OipError, OipHttpClient
from edgeserve.eval.fleet import FleetStack
from edgeserve.polling import wait_until
from tests.faults.conftest import Figures
from tests.faults.fleet import (
    FLEET_FAULT_MARKS,
    MODEL,
    Release,
    active_sha256,
    digits,
    online,
    packaged_release,
    send,
    start_reachable_fleet,
)

pytestmark = [
    *FLEET_FAULT_MARKS,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]

DEVICE = "dev-0"
TMPFS_SIZE = "6m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of a few MiB, unmounted afterwards (lazily, should anything hold it)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
        check=True,
        capture_output=True,
        timeout=10,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, timeout=10)


@pytest.fixture
def fleet_on_small_disk(tmp_path: Path, small_disk: Path) -> Iterator[FleetStack]:
    stack = start_reachable_fleet(tmp_path / "fleet", [])
    try:
        stack.start_agent(DEVICE, state_dir=str(small_disk / "agent-state"))
        wait_until(lambda: online(stack) == 1, 30, "agent online")
        yield stack
    finally:
        stack.stop()


def fill(folder: Path) -> Path:
    """Write a ballast file until the filesystem is full, to the last block; its path."""
    ballast = folder / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = 1 << 20
        while block >= 512:  # unbuffered writes, smaller and smaller, until none fits
            try:
                os.write(fd, b"\0" * block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                block //= 2
    finally:
        os.close(fd)
    return ballast


def test_a_full_disk_keeps_answers_flowing_and_fails_an_update_cleanly(
    fleet_on_small_disk: FleetStack, small_disk: Path, v2: Release, figures: Figures
) -> None:
    stack = fleet_on_small_disk
    state = small_disk / "agent-state"
    rows = digits(40)
    v1 = packaged_release()
    ballast = fill(small_disk)
    with OipHttpClient(stack.agent_url(DEVICE), timeout=30) as client:
        failures = 0
        for row_batch in (rows[:20], rows[20:]):
            try:
                send(client, row_batch)
            except OipError:
                failures += 1
        wait_until(lambda: telemetry_drops(client) > 0, 30, "telemetry drops to be counted")
        drops = telemetry_drops(client)
        rollout = stack.push(v2.artifact, v2.card, canary=1, stages=[1.0])
        view = stack.wait_rollout(rollout, timeout=60)
        served_while_full = client.model_metadata(MODEL)["versions"][0]
        sha_while_full = active_sha256(state)

        ballast.unlink()
        retried = stack.push(v2.artifact, v2.card, canary=1, stages=[1.0])
        retried_view = stack.wait_rollout(retried, timeout=60)
        served_after = client.model_metadata(MODEL)["versions"][0]
    figures.count("disk_full_requests_failed", failures, "requests", "0")
    figures.count("disk_full_telemetry_dropped", drops, "records", "counted, not crashing")
    assert failures == 0
    assert view["state"] != "completed", view  # the update could not be written
    assert (served_while_full, sha_while_full) == ("1", v1.card.sha256)
    assert retried_view["state"] == "completed", retried_view
    assert (served_after, active_sha256(state)) == ("2", v2.card.sha256)


@pytest.fixture
def slow_download_on_small_disk(tmp_path: Path, small_disk: Path) -> Iterator[FleetStack]:
    """The full artifact in 1 KiB chunks (no delta base registered), telemetry off, so the
    update's own chunks are what fills the disk."""
    stack = start_reachable_fleet(tmp_path / "fleet", [], baseline=(), chunk_size="1024")
    try:
        stack.start_agent(DEVICE, state_dir=str(small_disk / "agent-state"), telemetry="false")
        wait_until(lambda: online(stack) == 1, 30, "agent online")
        yield stack
    finally:
        stack.stop()


def test_a_disk_that_fills_mid_download_fails_the_update_and_gives_the_space_back(
    slow_download_on_small_disk: FleetStack, small_disk: Path, v2: Release
) -> None:
    stack = slow_download_on_small_disk
    state = small_disk / "agent-state"
    ballast = fill(small_disk)
    # Room for the manifest and a few chunks (a page each on tmpfs), not for the ~24 KiB
    # artifact's 24: the disk runs out part way through the download.
    os.truncate(ballast, ballast.stat().st_size - 48 * 1024)
    free_before = os.statvfs(small_disk).f_bavail
    rollout = stack.push(v2.artifact, v2.card, canary=1, stages=[1.0])
    view = stack.wait_rollout(rollout, timeout=60)
    device = next(d for d in view["devices"] if d["device_id"] == DEVICE)
    with OipHttpClient(stack.agent_url(DEVICE), timeout=30) as client:
        served = client.model_metadata(MODEL)["versions"][0]
        failed = client.metric('edgeserve_agent_sync_updates_total{result="failed"}')
    assert view["state"] != "completed", view
    assert device["state"] == "failed" and "storage" in device["reason"], device
    assert (served, active_sha256(state)) == ("1", packaged_release().card.sha256)
    assert failed == 1
    assert os.statvfs(small_disk).f_bavail >= free_before  # the partial download is gone
    ballast.unlink()
    retried = stack.wait_rollout(stack.push(v2.artifact, v2.card, canary=1), timeout=60)
    assert retried["state"] == "completed", retried
    assert active_sha256(state) == v2.card.sha256


def telemetry_drops(client: OipHttpClient) -> float:
    metrics = client.metrics()
    from edgeserve.client import metric_value

    return metric_value(metrics, "edgeserve_agent_telemetry_recorder_dropped_total") + sum(
        metric_value(metrics, f'edgeserve_agent_telemetry_outbox_dropped_total{{kind="{k}"}}')
        for k in ("request",)
    )
