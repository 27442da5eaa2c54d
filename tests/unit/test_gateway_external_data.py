"""The gateway repository serves ONNX models with external data, checked and counted.

The reference ``digits-cloud`` CNN is re-saved by the ``onnx`` package as ``model.onnx``
+ ``model.onnx.data`` in a real repository folder and loaded by the real repository
(ONNX Runtime on the CPU).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from cloud_gateway.repository.files import CHECKSUMS
from cloud_gateway.repository.manager import ModelRepository
from cloud_gateway.repository.seed import seed_repository
from edgeserve.wire.errors import IntegrityError, InvalidInput

MODEL = "digits-cloud"
ROWS = np.random.default_rng(0).random((4, 64), dtype=np.float32)


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    seed_repository(root)
    return root


def split(version_dir: Path) -> tuple[Path, Path]:
    """Re-save the version's model.onnx with its weights in model.onnx.data."""
    path = version_dir / "model.onnx"
    onnx.save(onnx.load(str(path)), str(path), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data",
              size_threshold=0)  # fmt: skip
    return path, version_dir / "model.onnx.data"


def sha256sums(version_dir: Path, *names: str) -> None:
    lines = [f"{hashlib.sha256((version_dir / n).read_bytes()).hexdigest()}  {n}" for n in names]
    (version_dir / CHECKSUMS).write_text("\n".join(lines) + "\n")


def with_repo(root: Path, body: Callable[[ModelRepository], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        with ThreadPoolExecutor(2) as pool:
            repository = ModelRepository(root, 1 << 30, pool)
            try:
                return await body(repository)
            finally:
                await repository.close()

    return asyncio.run(run())


async def logits(repository: ModelRepository) -> np.ndarray:
    loaded = await repository.get(MODEL)
    outputs = await loaded.batcher.submit("t", 1.0, {"input": ROWS})
    return np.asarray(outputs["logits"])


def test_a_model_with_external_data_answers_as_the_single_file(repo_dir: Path) -> None:
    before = with_repo(repo_dir, logits)
    split(repo_dir / MODEL / "1")
    np.testing.assert_array_equal(with_repo(repo_dir, logits), before)


def test_the_external_data_counts_toward_the_memory_estimate(repo_dir: Path) -> None:
    model, data = split(repo_dir / MODEL / "1")

    async def body(repository: ModelRepository) -> int:
        return (await repository.get(MODEL)).memory_bytes

    assert data.stat().st_size > 10 * model.stat().st_size  # the weights moved out
    assert with_repo(repo_dir, body) >= 2 * (model.stat().st_size + data.stat().st_size)


def test_a_missing_external_data_file_is_refused_with_the_fix(repo_dir: Path) -> None:
    _, data = split(repo_dir / MODEL / "1")
    data.unlink()
    with pytest.raises(InvalidInput, match=r"'model\.onnx\.data'.*copy that file with the model"):
        with_repo(repo_dir, logits)


def test_checksums_that_cover_both_files_let_the_model_load(repo_dir: Path) -> None:
    split(repo_dir / MODEL / "1")
    sha256sums(repo_dir / MODEL / "1", "model.onnx", "model.onnx.data")
    assert with_repo(repo_dir, logits).shape == (4, 10)


def test_altered_external_data_fails_its_checksum_before_loading(repo_dir: Path) -> None:
    _, data = split(repo_dir / MODEL / "1")
    sha256sums(repo_dir / MODEL / "1", "model.onnx", "model.onnx.data")
    weights = bytearray(data.read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    data.write_bytes(bytes(weights))
    with pytest.raises(IntegrityError, match=r"model\.onnx\.data does not match"):
        with_repo(repo_dir, logits)


def test_checksums_that_leave_out_the_external_data_are_refused(repo_dir: Path) -> None:
    split(repo_dir / MODEL / "1")
    sha256sums(repo_dir / MODEL / "1", "model.onnx")
    with pytest.raises(IntegrityError, match=r"model\.onnx\.data is part of the model but not"):
        with_repo(repo_dir, logits)
