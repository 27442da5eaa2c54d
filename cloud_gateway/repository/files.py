"""The files one model version is made of, checked before the backend reads them.

An ONNX model may keep its weights in external data files beside ``model.onnx``
(``model.onnx.data``: torch's exporter does so for large models, and a model over 2 GB
must). ONNX Runtime reads them itself, so the repository lists them first: a missing one,
or one outside the version folder, is refused with the fix instead of a half-loaded
session; their bytes count toward the memory estimate the LRU budget uses; and where the
version folder has a ``SHA256SUMS`` file (``sha256sum`` output), every file of the model
must be listed there with a matching digest before anything is loaded::

    digits-cloud/3/
      model.onnx
      model.onnx.data
      SHA256SUMS          sha256sum model.onnx model.onnx.data > SHA256SUMS
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cloud_gateway.repository.config import ModelConfig
from edgeserve.runtimes.onnx_files import model_files
from edgeserve.wire.errors import IntegrityError, InvalidInput

CHECKSUMS = "SHA256SUMS"
HASH_BLOCK = 1 << 20


def version_files(artifact: Path, config: ModelConfig) -> list[Path]:
    """``artifact`` and, for ONNX, every external data file it names (checked present)."""
    if config.backend == "onnxruntime":
        return model_files(artifact)
    return [artifact]


def estimate_bytes(config: ModelConfig, files: list[Path]) -> int:
    """``memory_estimate_bytes`` if set, else twice the bytes of all the model's files."""
    if config.memory_estimate_bytes is not None:
        return config.memory_estimate_bytes
    return 2 * sum(path.stat().st_size for path in files)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def read_checksums(path: Path) -> dict[str, str]:
    """{file name: sha256} from ``sha256sum`` output (text or binary mode marks)."""
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        if len(digest) != 64 or not name:
            raise InvalidInput(f"{path}: line {number} is not '<sha256>  <file>'")
        sums[name.lstrip(" *")] = digest.lower()
    return sums


def verify_checksums(version_dir: Path, files: list[Path]) -> bool:
    """Check ``files`` against the folder's SHA256SUMS; False when it has none."""
    listing = version_dir / CHECKSUMS
    if not listing.is_file():
        return False
    sums = read_checksums(listing)
    for path in files:
        name = path.resolve().relative_to(version_dir.resolve()).as_posix()
        if name not in sums:
            raise IntegrityError(
                f"{version_dir}: {name} is part of the model but not listed in {CHECKSUMS} "
                f"(regenerate it: sha256sum {' '.join(p.name for p in files)} > {CHECKSUMS})"
            )
        if sha256_file(path) != sums[name]:
            raise IntegrityError(f"{version_dir}: {name} does not match its {CHECKSUMS} digest")
    return True
