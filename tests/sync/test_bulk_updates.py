"""Large payloads over HTTPS with Range requests, the manifest over MQTT: end to end.

Every part is real: Mosquitto, the sync service publishing payloads into a folder, nginx
from the distribution serving that folder over TLS with a certificate from the fleet's
CA, and agent processes. The payload is the full artifact (no base registered) in 1 KiB
chunks, and ``bulk_min_bytes`` is 0, so the small reference model takes the HTTP path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from edgeserve.broker import find_mosquitto
from edgeserve.client import OipHttpClient, metric_value
from edgeserve.eval.fleet import FleetStack, start_fleet
from edgeserve.polling import wait_until
from edgeserve.processes import free_port
from edgeserve.security.pki import ensure_dev_pki
from edgeserve.testing.nginx import NginxHost, find_nginx
from edgeserve.wire.model_card import ModelCard
from models.finetune import build_edge_version

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed"),
    pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed"),
]

MODEL = "digits-edge"
DEVICE = "dev-0"
Release = tuple[Path, ModelCard]
StartFleet = Callable[..., FleetStack]


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Release:
    return build_edge_version(tmp_path_factory.mktemp("v2"))


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., tuple[FleetStack, NginxHost]]]:
    """``start(limit_rate=None, base_url=None)``: nginx on the bulk folder, then a fleet
    whose sync service publishes every payload there (``base_url`` overrides the URL)."""
    running: list[tuple[FleetStack, NginxHost]] = []

    def start_stack(
        limit_rate: int | None = None, base_url: str | None = None
    ) -> tuple[FleetStack, NginxHost]:
        workdir = tmp_path / f"fleet-{len(running)}"
        pki = ensure_dev_pki(workdir / "pki", devices=[])  # the fleet reuses this CA
        bulk = workdir / "bulk"
        bulk.mkdir(parents=True)
        nginx = NginxHost(
            workdir / "nginx", bulk, pki.server.cert, pki.server.key, limit_rate=limit_rate
        ).start()
        try:
            stack = start_fleet(
                workdir,
                [],
                baseline=(),
                chunk_size="1024",
                bulk_dir=str(bulk),
                bulk_base_url=base_url or nginx.base_url,
                bulk_min_bytes="0",
            )
        except BaseException:
            nginx.stop()
            raise
        running.append((stack, nginx))
        return stack, nginx

    yield start_stack
    for stack, nginx in running:
        stack.stop()
        nginx.stop()


def test_a_large_payload_travels_over_https_range_requests_not_the_broker(
    start: Callable[..., tuple[FleetStack, NginxHost]], v2: Release
) -> None:
    stack, nginx = start()
    stack.start_agent(DEVICE, telemetry="false")
    wait_until(lambda: online(stack) == 1, 30, "device online")

    rollout = stack.push(*v2, canary=1, stages=[1.0])

    assert stack.wait_rollout(rollout, timeout=60)["state"] == "completed"
    assert served_version(stack, DEVICE) == "2"
    fetched = [r for r in nginx.records() if r.method == "GET"]
    assert fetched and all(r.status == 206 and r.range.startswith("bytes=") for r in fetched)
    assert metric_value(sync_metrics(stack), "edgeserve_sync_chunks_served_total") == 0


def test_a_download_cut_by_kill_9_resumes_with_a_range_for_the_missing_bytes_only(
    start: Callable[..., tuple[FleetStack, NginxHost]], v2: Release
) -> None:
    # 4 KiB/s: the ~20 KiB payload takes seconds, so the agent dies with it half fetched.
    stack, nginx = start(limit_rate=4096)
    stack.start_agent(DEVICE, telemetry="false")
    wait_until(lambda: online(stack) == 1, 30, "device online")
    rollout = stack.push(*v2, canary=1, stages=[1.0])
    downloads = stack.workdir / f"{DEVICE}-state" / "downloads"
    wait_until(lambda: stored_chunks(downloads) >= 3, 30, "first chunks stored")

    stack.agents[DEVICE].kill()
    kept = stored_chunks(downloads)
    stack.start_agent(DEVICE, telemetry="false")

    assert stack.wait_rollout(rollout, timeout=60)["state"] == "completed"
    assert served_version(stack, DEVICE) == "2"
    first, *resumed = [r for r in nginx.records() if r.method == "GET"]
    assert first.range.startswith("bytes=0-")
    # The restarted agent asks from the first chunk it lacks, never from byte 0 again.
    assert resumed and all(int(r.range[6:].split("-")[0]) >= kept * 1024 for r in resumed)
    payload = int(first.range.split("-")[1]) + 1
    assert sum(r.bytes_sent for r in resumed) <= payload - kept * 1024


def test_a_tampered_byte_from_the_host_is_refused_and_the_chunk_fetched_again(
    start: Callable[..., tuple[FleetStack, NginxHost]], v2: Release
) -> None:
    stack, nginx = start(limit_rate=4096)
    stack.start_agent(DEVICE, telemetry="false")
    wait_until(lambda: online(stack) == 1, 30, "device online")
    rollout = stack.push(*v2, canary=1, stages=[1.0])
    # The published copy is damaged near its end, while the slow transfer is at its start.
    published = wait_until(lambda: next(nginx.root.glob("??/*"), None), 30, "payload published")
    with published.open("r+b") as served:
        served.seek(published.stat().st_size - 10)
        original = served.read(1)
        served.seek(-1, 1)
        served.write(bytes([original[0] ^ 0xFF]))

    assert stack.wait_rollout(rollout, timeout=90)["state"] == "completed"
    assert served_version(stack, DEVICE) == "2"  # from the true bytes, fetched again
    assert agent_rejections(stack, DEVICE, "integrity") >= 1
    # The damaged chunk came over MQTT once the host kept serving it damaged.
    assert metric_value(sync_metrics(stack), "edgeserve_sync_chunks_served_total") >= 1


def test_an_unreachable_payload_host_falls_back_to_mqtt_chunks(
    start: Callable[..., tuple[FleetStack, NginxHost]], v2: Release
) -> None:
    stack, _ = start(base_url=f"https://127.0.0.1:{free_port()}")  # nothing listens
    stack.start_agent(DEVICE, telemetry="false")
    wait_until(lambda: online(stack) == 1, 30, "device online")

    rollout = stack.push(*v2, canary=1, stages=[1.0])

    assert stack.wait_rollout(rollout, timeout=60)["state"] == "completed"
    assert served_version(stack, DEVICE) == "2"
    assert agent_rejections(stack, DEVICE, "bulk_unavailable") >= 1
    assert metric_value(sync_metrics(stack), "edgeserve_sync_chunks_served_total") > 0


# -- helpers -----------------------------------------------------------------------------


def online(stack: FleetStack) -> int:
    with stack.admin() as admin:
        return sum(1 for device in admin.devices() if device["online"])


def served_version(stack: FleetStack, device: str) -> str:
    with OipHttpClient(stack.agent_url(device)) as client:
        versions: list[str] = client.model_metadata(MODEL)["versions"]
    return versions[0]


def stored_chunks(downloads: Path) -> int:
    return sum(1 for path in downloads.glob("*/chunks/*") if path.name.isdigit())


def sync_metrics(stack: FleetStack) -> str:
    return httpx.get(f"{stack.admin_url}/metrics").text


def agent_rejections(stack: FleetStack, device: str, reason: str) -> float:
    with OipHttpClient(stack.agent_url(device)) as client:
        return client.metric(f'edgeserve_agent_sync_rejected_total{{reason="{reason}"}}')
