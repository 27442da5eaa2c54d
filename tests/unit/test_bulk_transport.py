"""The pieces of the HTTP bulk path that need no server: runs, publishing, configuration."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.updates.ranges import chunk_runs
from edgeserve.wire.manifest import PayloadSpec
from sync.bulk import BulkPublisher
from sync.config import SyncConfig


def test_missing_chunks_group_into_runs_of_adjacent_indices() -> None:
    assert chunk_runs([7, 1, 2, 3, 5, 2], max_chunks=64) == [(1, 3), (5, 5), (7, 7)]


def test_a_run_is_split_at_the_request_size() -> None:
    assert chunk_runs(range(10), max_chunks=4) == [(0, 3), (4, 7), (8, 9)]


def test_a_published_payload_sits_under_its_content_address(tmp_path: Path) -> None:
    source = tmp_path / "payload"
    source.write_bytes(b"x" * 5000)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    publisher = BulkPublisher(tmp_path / "export", "https://cdn.example/p/", min_bytes=4096)

    url = publisher.publish(source, sha)

    assert url == f"https://cdn.example/p/{sha[:2]}/{sha}"
    assert (tmp_path / "export" / sha[:2] / sha).read_bytes() == source.read_bytes()
    assert (tmp_path / "export" / sha[:2] / sha).stat().st_mode & 0o444 == 0o444


def test_damage_to_the_published_copy_does_not_reach_the_source(tmp_path: Path) -> None:
    source = tmp_path / "payload"
    source.write_bytes(b"y" * 100)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    publisher = BulkPublisher(tmp_path / "export", "https://cdn.example", min_bytes=0)
    publisher.publish(source, sha)

    publisher.path(sha).write_bytes(b"z" * 100)

    assert source.read_bytes() == b"y" * 100


def test_only_payloads_from_the_threshold_up_go_over_http(tmp_path: Path) -> None:
    publisher = BulkPublisher(tmp_path, "https://cdn.example", min_bytes=4 << 20)
    assert not publisher.wants((4 << 20) - 1)
    assert publisher.wants(4 << 20)


def test_the_bulk_folder_without_its_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="go together"):
        SyncConfig(bulk_dir=tmp_path)


def test_a_bulk_url_that_is_not_http_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not an http"):
        SyncConfig(bulk_dir=tmp_path, bulk_base_url="ftp://host/payloads")


def test_a_manifest_refuses_a_payload_url_that_is_not_http() -> None:
    with pytest.raises(ValidationError, match="url"):
        PayloadSpec(
            encoding="zstd",
            sha256="0" * 64,
            size=1,
            chunk_size=1024,
            chunks=["0" * 64],
            url="file:///etc/passwd",
        )
