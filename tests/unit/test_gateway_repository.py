"""The gateway's model repository: lazy loads, one load per burst, LRU eviction, policies."""

from __future__ import annotations

import asyncio
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cloud_gateway.repository.manager import ModelRepository
from cloud_gateway.repository.seed import seed_repository
from edgeserve.artifacts import packaged_artifacts
from edgeserve.wire.errors import ModelNotFound, Unavailable

MODEL_BYTES = (packaged_artifacts() / "digits-cloud.onnx").stat().st_size


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    seed_repository(root)
    return root


def _run(coro):
    return asyncio.run(coro)


async def _with_repo(root: Path, budget: int, body):
    with ThreadPoolExecutor(2) as pool:
        repository = ModelRepository(root, budget, pool)
        try:
            return await body(repository)
        finally:
            await repository.close()


def test_first_request_loads_the_latest_version_lazily(repo_dir):
    async def body(repository: ModelRepository):
        assert repository.loaded() == []
        loaded = await repository.get("digits-cloud")
        outputs = await loaded.batcher.submit("t", 1.0, {"input": np.zeros((2, 64), np.float32)})
        return loaded.version, outputs["logits"].shape

    assert _run(_with_repo(repo_dir, 1 << 30, body)) == ("1", (2, 10))


def test_a_burst_on_a_cold_model_loads_it_once(repo_dir):
    async def body(repository: ModelRepository):
        versions = await asyncio.gather(*(repository.get("digits-cloud") for _ in range(20)))
        return {id(v) for v in versions}

    assert len(_run(_with_repo(repo_dir, 1 << 30, body))) == 1


def test_least_recently_used_idle_model_is_evicted_to_fit_the_budget(repo_dir):
    async def body(repository: ModelRepository):
        await repository.get("digits-cloud")
        await repository.get("digits-edge-fp32")
        return sorted(v.name for v in repository.loaded())

    budget = 2 * MODEL_BYTES + 1000  # room for the cloud model (2x file) but not both
    assert _run(_with_repo(repo_dir, budget, body)) == ["digits-edge-fp32"]


def test_a_busy_model_is_not_evicted(repo_dir):
    async def body(repository: ModelRepository):
        busy = await repository.get("digits-cloud")
        busy.in_flight = 1
        with pytest.raises(Unavailable, match="busy"):
            await repository.get("digits-edge-fp32")
        busy.in_flight = 0

    _run(_with_repo(repo_dir, 2 * MODEL_BYTES + 1000, body))


def test_a_model_larger_than_the_whole_budget_is_refused_clearly(repo_dir):
    async def body(repository: ModelRepository):
        with pytest.raises(Unavailable, match="over the whole budget"):
            await repository.get("digits-cloud")

    _run(_with_repo(repo_dir, 1 << 20, body))


def test_version_policy_latest_serves_only_the_newest(repo_dir):
    shutil.copytree(repo_dir / "digits-cloud" / "1", repo_dir / "digits-cloud" / "2")

    async def body(repository: ModelRepository):
        entry = repository.entry("digits-cloud")
        with pytest.raises(ModelNotFound, match="version '1'"):
            await repository.get("digits-cloud", "1")
        return entry.versions, (await repository.get("digits-cloud")).version

    assert _run(_with_repo(repo_dir, 1 << 30, body)) == (["2"], "2")


def test_specific_version_policy_serves_the_listed_versions(repo_dir):
    shutil.copytree(repo_dir / "digits-cloud" / "1", repo_dir / "digits-cloud" / "2")
    config = repo_dir / "digits-cloud" / "config.toml"
    config.write_text(
        config.read_text().replace(
            "[batching]", '[version_policy]\nspecific = ["1", "2"]\n\n[batching]'
        )
    )

    async def body(repository: ModelRepository):
        return repository.entry("digits-cloud").versions

    assert _run(_with_repo(repo_dir, 1 << 30, body)) == ["1", "2"]


def test_unknown_model_is_not_found(repo_dir):
    async def body(repository: ModelRepository):
        with pytest.raises(ModelNotFound):
            await repository.get("nope")

    _run(_with_repo(repo_dir, 1 << 30, body))


def test_index_shows_state_and_a_broken_model_with_its_reason(repo_dir):
    (repo_dir / "digits-edge-fp32" / "1" / "model.onnx").write_bytes(b"not onnx")

    async def body(repository: ModelRepository):
        await repository.get("digits-cloud")
        with pytest.raises(Exception, match=r"digits-edge-fp32|onnx"):
            await repository.get("digits-edge-fp32")
        return {row["name"]: row for row in repository.index()}

    index = _run(_with_repo(repo_dir, 1 << 30, body))
    assert index["digits-cloud"]["state"] == "READY"
    assert index["digits-edge-fp32"]["state"] == "UNAVAILABLE"
    assert index["digits-edge-fp32"]["reason"]


def test_unload_then_get_loads_again(repo_dir):
    async def body(repository: ModelRepository):
        first = await repository.get("digits-cloud")
        assert await repository.unload("digits-cloud") == 1
        second = await repository.get("digits-cloud")
        return first is second

    assert _run(_with_repo(repo_dir, 1 << 30, body)) is False
