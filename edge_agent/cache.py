"""A bounded LRU cache of inference results, keyed by model version and input bytes.

Edge traffic repeats itself (the same frame, the same sensor reading), and a cache hit
costs a hash instead of a model run. Bounded in entries and in bytes, so a flood of
large distinct inputs cannot grow the agent's memory.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeserve.wire.tensors import InferTensor


@dataclass(frozen=True, slots=True)
class CachedResult:
    outputs: tuple[InferTensor, ...]
    parameters: dict[str, Any]
    nbytes: int


def cache_key(model: str, version: str, inputs: list[InferTensor], outputs: list[str]) -> bytes:
    """A digest of everything that determines the answer."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{model}\0{version}\0{','.join(outputs)}".encode())
    for tensor in sorted(inputs, key=lambda t: t.name):
        digest.update(f"\0{tensor.name}\0{tensor.datatype}\0{tensor.shape}\0".encode())
        digest.update(_tensor_bytes(tensor.data))
    return digest.digest()


def _tensor_bytes(array: npt.NDArray[Any]) -> bytes:
    if array.dtype == np.object_:
        return b"\0".join(bytes(item) for item in array.reshape(-1))
    return np.ascontiguousarray(array).tobytes()


class ResultCache:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._bytes = 0
        self._entries: OrderedDict[bytes, CachedResult] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: bytes) -> CachedResult | None:
        with self._lock:
            result = self._entries.get(key)
            if result is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return result

    def put(self, key: bytes, outputs: list[InferTensor], parameters: dict[str, Any]) -> None:
        nbytes = sum(_size_of(t.data) for t in outputs) + len(key)
        if not self.enabled or nbytes > self.max_bytes:
            return
        entry = CachedResult(tuple(outputs), dict(parameters), nbytes)
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous.nbytes
            self._entries[key] = entry
            self._bytes += nbytes
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def _size_of(array: npt.NDArray[Any]) -> int:
    if array.dtype == np.object_:
        return sum(len(bytes(item)) for item in array.reshape(-1)) + 8 * array.size
    return int(array.nbytes)
