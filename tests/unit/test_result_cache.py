"""The result cache: LRU, bounded in entries and bytes, keyed by everything that matters."""

import numpy as np

from edge_agent.cache import ResultCache, cache_key
from edgeserve.wire.tensors import InferTensor


def _tensor(value: float, size: int = 4) -> InferTensor:
    return InferTensor.from_numpy("x", np.full(size, value, np.float32))


def _key(value: float, version: str = "1") -> bytes:
    return cache_key("m", version, [_tensor(value)], ["y"])


def test_same_input_same_key_and_different_version_different_key():
    assert _key(1.0) == _key(1.0)
    assert _key(1.0) != _key(2.0)
    assert _key(1.0, "1") != _key(1.0, "2")


def test_hit_and_miss_are_counted():
    cache = ResultCache(10, 1 << 20)
    assert cache.get(_key(1)) is None
    cache.put(_key(1), [_tensor(9)], {"confidence": [0.9]})
    hit = cache.get(_key(1))
    assert hit is not None and hit.parameters == {"confidence": [0.9]}
    assert (cache.hits, cache.misses) == (1, 1)


def test_least_recently_used_entry_is_evicted_past_max_entries():
    cache = ResultCache(2, 1 << 20)
    cache.put(_key(1), [_tensor(1)], {})
    cache.put(_key(2), [_tensor(2)], {})
    cache.get(_key(1))
    cache.put(_key(3), [_tensor(3)], {})
    assert cache.get(_key(2)) is None
    assert cache.get(_key(1)) is not None
    assert cache.evictions == 1


def test_byte_budget_bounds_the_cache():
    cache = ResultCache(1000, 1000)
    for value in range(50):
        cache.put(_key(value), [_tensor(value, size=50)], {})
    assert cache.nbytes <= 1000
    assert len(cache) < 50


def test_entry_larger_than_budget_is_not_stored():
    cache = ResultCache(10, 100)
    cache.put(_key(1), [_tensor(1, size=1000)], {})
    assert len(cache) == 0


def test_zero_entries_disables_the_cache():
    assert not ResultCache(0, 1000).enabled
