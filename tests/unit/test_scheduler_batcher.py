"""Dynamic batching over a real event loop and a real thread pool, with a numpy model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from cloud_gateway.scheduler import BatchingConfig, DynamicBatcher, Tensors
from edgeserve.wire.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    Unavailable,
)


def double(inputs: Tensors) -> Tensors:
    return {"y": inputs["x"] * 2}


class Model:
    """A numpy model that records every batch it is given and can be held at a gate."""

    def __init__(self, fn: Callable[[Tensors], Tensors] = double) -> None:
        self.fn = fn
        self.batches: list[Tensors] = []
        self.threads: list[threading.Thread] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, inputs: Tensors) -> Tensors:
        self.batches.append(inputs)
        self.threads.append(threading.current_thread())
        self.entered.set()
        assert self.gate.wait(timeout=5), "test never opened the gate"
        return self.fn(inputs)

    def seen(self, name: str = "x") -> list[float]:
        return [float(v) for batch in self.batches for v in batch[name].ravel()]


def config(**overrides: Any) -> BatchingConfig:
    settings: dict[str, Any] = {
        "max_batch_size": 8,
        "max_queue_delay_s": 0.0,
        "preferred_batch_sizes": [],
        "max_queue_size": 100,
        "default_priority_level": 1,
    }
    settings.update(overrides)
    return BatchingConfig(**settings)


def x(*values: float, dtype: Any = np.float32) -> Tensors:
    return {"x": np.array(values, dtype=dtype).reshape(-1, 1)}


Scenario = Callable[[DynamicBatcher], Awaitable[Any]]


def run(
    model: Model,
    settings: BatchingConfig,
    scenario: Scenario,
    *,
    workers: int = 2,
    sizes: list[int] | None = None,
    waits: list[float] | None = None,
) -> Any:
    """Start a batcher on a fresh loop and pool, run the scenario, always tear down."""

    def on_batch(size: int, queue_wait_s: list[float]) -> None:
        if sizes is not None:
            sizes.append(size)
        if waits is not None:
            waits.extend(queue_wait_s)

    async def main() -> Any:
        batcher = DynamicBatcher(model, pool, settings, on_batch=on_batch)
        batcher.start()
        try:
            return await scenario(batcher)
        finally:
            model.gate.set()
            await batcher.stop()

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model")
    try:
        return asyncio.run(main())
    finally:
        model.gate.set()
        pool.shutdown(wait=True)


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    limit = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < limit, "condition not reached in time"
        await asyncio.sleep(0.001)


async def hold_the_only_slot(batcher: DynamicBatcher, model: Model) -> asyncio.Task[Tensors]:
    """Park one request inside the model so that everything after it has to queue."""
    model.gate.clear()
    blocker = asyncio.ensure_future(batcher.submit("blocker", 1.0, x(-1.0)))
    await until(model.entered.is_set)
    return blocker


def test_execute_runs_on_a_worker_thread_not_the_event_loop():
    model = Model()

    run(model, config(), lambda b: b.submit("t", 1.0, x(1.0)))

    assert model.threads[0] is not threading.main_thread()
    assert model.threads[0].name.startswith("model")


def test_batched_results_equal_unbatched_results_row_for_row():
    def affine(inputs: Tensors) -> Tensors:
        return {"y": inputs["x"] * 2.0 + 1.0, "total": inputs["ids"].sum(axis=1)}

    rng = np.random.default_rng(7)
    requests = [
        {
            "x": rng.standard_normal((n, 4)).astype(np.float32),
            "ids": rng.integers(0, 100, (n, 3)),
        }
        for n in [1, 3, 2, 1, 4, 2, 1, 2]
    ]
    model = Model(affine)

    async def scenario(batcher: DynamicBatcher) -> list[Tensors]:
        return await asyncio.gather(
            *(batcher.submit(f"t{i % 3}", 1.0, r) for i, r in enumerate(requests))
        )

    results = run(model, config(max_batch_size=8, max_queue_delay_s=0.05), scenario)

    assert any(len(batch["x"]) > 1 for batch in model.batches)
    for request, result in zip(requests, results, strict=True):
        expected = affine(request)
        assert result.keys() == expected.keys()
        for name in expected:
            np.testing.assert_array_equal(result[name], expected[name])


def test_concurrent_submits_are_executed_as_one_batch():
    sizes: list[int] = []
    settings = config(max_batch_size=4, max_queue_delay_s=5.0)

    async def scenario(batcher: DynamicBatcher) -> float:
        started = time.monotonic()
        await asyncio.gather(*(batcher.submit("t", 1.0, x(i)) for i in range(4)))
        return time.monotonic() - started

    elapsed = run(Model(), settings, scenario, sizes=sizes)

    assert sizes == [4]
    assert elapsed < 2.0  # a full batch goes at once instead of waiting out the delay


def test_rows_count_toward_max_batch_size():
    sizes: list[int] = []
    settings = config(max_batch_size=4, max_queue_delay_s=0.01)

    async def scenario(batcher: DynamicBatcher) -> None:
        await asyncio.gather(*(batcher.submit(f"t{i}", 1.0, x(i, i, i)) for i in range(3)))

    run(Model(), settings, scenario, sizes=sizes)

    assert sizes == [3, 3, 3]


def test_a_lone_request_waits_at_most_max_queue_delay_when_told_to_wait():
    sizes: list[int] = []

    async def scenario(batcher: DynamicBatcher) -> float:
        started = time.monotonic()
        await batcher.submit("t", 1.0, x(1.0))
        return time.monotonic() - started

    settings = config(max_queue_delay_s=0.05, dispatch_when_idle=False)
    elapsed = run(Model(), settings, scenario, sizes=sizes)

    assert sizes == [1]
    assert 0.04 <= elapsed < 1.0


def test_an_idle_batcher_runs_a_lone_request_without_waiting_out_the_delay():
    async def scenario(batcher: DynamicBatcher) -> float:
        started = time.monotonic()
        await batcher.submit("t", 1.0, x(1.0))
        return time.monotonic() - started

    assert run(Model(), config(max_queue_delay_s=5.0), scenario) < 1.0


def test_a_preferred_batch_size_goes_without_waiting_out_the_delay():
    sizes: list[int] = []
    settings = config(max_batch_size=8, preferred_batch_sizes=[2], max_queue_delay_s=5.0)

    async def scenario(batcher: DynamicBatcher) -> float:
        started = time.monotonic()
        await asyncio.gather(batcher.submit("a", 1.0, x(1.0)), batcher.submit("b", 1.0, x(2.0)))
        return time.monotonic() - started

    elapsed = run(Model(), settings, scenario, sizes=sizes)

    assert sizes == [2]
    assert elapsed < 2.0


def test_disabled_batching_runs_every_request_alone():
    sizes: list[int] = []

    async def scenario(batcher: DynamicBatcher) -> None:
        await asyncio.gather(*(batcher.submit("t", 1.0, x(i)) for i in range(5)))

    run(Model(), config(enabled=False, max_queue_delay_s=1.0), scenario, sizes=sizes)

    assert sizes == [1] * 5


def test_a_request_whose_deadline_passes_in_the_queue_is_refused_and_never_executed():
    model = Model()

    async def scenario(batcher: DynamicBatcher) -> None:
        blocker = await hold_the_only_slot(batcher, model)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit("t", 1.0, x(99.0), deadline=time.monotonic() + 0.05)
        model.gate.set()
        await blocker
        await batcher.submit("t", 1.0, x(2.0))
        assert batcher.stats.expired == 1

    run(model, config(max_queue_delay_s=0.0), scenario)

    assert 99.0 not in model.seen()
    assert 2.0 in model.seen()


def test_a_deadline_already_past_is_refused_at_submit():
    model = Model()

    async def scenario(batcher: DynamicBatcher) -> None:
        with pytest.raises(DeadlineExceeded):
            await batcher.submit("t", 1.0, x(1.0), deadline=time.monotonic() - 1.0)

    run(model, config(), scenario)

    assert model.batches == []


def test_a_full_queue_refuses_with_unavailable():
    model = Model()

    async def scenario(batcher: DynamicBatcher) -> list[Tensors]:
        blocker = await hold_the_only_slot(batcher, model)
        queued = [asyncio.ensure_future(batcher.submit("t", 1.0, x(i))) for i in range(2)]
        await until(lambda: batcher.queue_depth == 2)
        with pytest.raises(Unavailable, match="queue full"):
            await batcher.submit("t", 1.0, x(3.0))
        model.gate.set()
        await blocker
        return await asyncio.gather(*queued)

    results = run(model, config(max_batch_size=1, max_queue_size=2), scenario)

    assert len(results) == 2


def test_when_execute_raises_the_whole_batch_fails_and_the_batcher_keeps_working():
    def fragile(inputs: Tensors) -> Tensors:
        if (inputs["x"] < 0).any():
            raise RuntimeError("negative input")
        return double(inputs)

    async def scenario(batcher: DynamicBatcher) -> tuple[list[Any], Tensors]:
        failed = await asyncio.gather(
            *(batcher.submit(f"t{v}", 1.0, x(v)) for v in (1.0, -1.0, 2.0)),
            return_exceptions=True,
        )
        return failed, await batcher.submit("t", 1.0, x(5.0))

    sizes: list[int] = []
    settings = config(max_batch_size=3, max_queue_delay_s=0.05)
    failed, after = run(Model(fragile), settings, scenario, sizes=sizes)

    assert sizes == [3, 1]

    assert all(isinstance(error, InternalError) for error in failed)
    assert all(isinstance(error.__cause__, RuntimeError) for error in failed)
    np.testing.assert_array_equal(after["y"], [[10.0]])


def test_edgeserve_errors_from_execute_reach_the_caller_unwrapped():
    def picky(inputs: Tensors) -> Tensors:
        raise InvalidInput("x out of range")

    async def scenario(batcher: DynamicBatcher) -> None:
        with pytest.raises(InvalidInput, match="out of range"):
            await batcher.submit("t", 1.0, x(1.0))

    run(Model(picky), config(), scenario)


def test_an_output_with_the_wrong_row_count_fails_the_batch_as_internal_error():
    async def scenario(batcher: DynamicBatcher) -> None:
        with pytest.raises(InternalError, match="rows"):
            await batcher.submit("t", 1.0, x(1.0, 2.0))

    run(Model(lambda d: {"y": d["x"][:1]}), config(), scenario)


def test_incompatible_shapes_and_dtypes_are_batched_apart_and_all_succeed():
    model = Model()
    requests = [
        {"x": np.ones((1, 3), np.float32)},
        {"x": np.ones((1, 5), np.float32)},
        {"x": np.ones((1, 3), np.int64)},
        {"x": np.full((2, 3), 4, np.float32)},
    ]

    async def scenario(batcher: DynamicBatcher) -> list[Tensors]:
        return await asyncio.gather(
            *(batcher.submit(f"t{i}", 1.0, r) for i, r in enumerate(requests))
        )

    results = run(model, config(max_queue_delay_s=0.01), scenario)

    for request, result in zip(requests, results, strict=True):
        assert result["y"].dtype == request["x"].dtype
        np.testing.assert_array_equal(result["y"], request["x"] * 2)
    # The two float32 (n, 3) requests still shared a batch.
    assert any(b["x"].shape == (3, 3) and b["x"].dtype == np.float32 for b in model.batches)


def test_stop_fails_queued_requests_and_lets_the_running_batch_finish():
    model = Model()

    async def scenario(batcher: DynamicBatcher) -> None:
        blocker = await hold_the_only_slot(batcher, model)
        queued = [asyncio.ensure_future(batcher.submit("t", 1.0, x(i))) for i in range(3)]
        await until(lambda: batcher.queue_depth == 3)
        stopping = asyncio.ensure_future(batcher.stop())
        for request in queued:
            with pytest.raises(Unavailable, match="shutting down"):
                await request
        model.gate.set()
        await stopping
        np.testing.assert_array_equal((await blocker)["y"], [[-2.0]])
        with pytest.raises(Unavailable):
            await batcher.submit("t", 1.0, x(1.0))

    run(model, config(max_batch_size=1), scenario)


def test_a_cancelled_request_leaves_the_queue_and_never_runs():
    model = Model()

    async def scenario(batcher: DynamicBatcher) -> None:
        blocker = await hold_the_only_slot(batcher, model)
        doomed = asyncio.ensure_future(batcher.submit("t", 1.0, x(99.0)))
        await until(lambda: batcher.queue_depth == 1)
        doomed.cancel()
        await asyncio.wait([doomed])
        assert batcher.queue_depth == 0
        model.gate.set()
        await blocker
        await batcher.submit("t", 1.0, x(2.0))

    run(model, config(), scenario)

    assert 99.0 not in model.seen()


def test_a_flooding_tenant_cannot_starve_a_light_tenant():
    model = Model()

    async def scenario(batcher: DynamicBatcher) -> None:
        blocker = await hold_the_only_slot(batcher, model)
        flood = [asyncio.ensure_future(batcher.submit("flood", 1.0, x(0.0))) for _ in range(1000)]
        await until(lambda: batcher.queue_depth == 1000)
        light = [asyncio.ensure_future(batcher.submit("light", 1.0, x(1.0))) for _ in range(3)]
        await until(lambda: batcher.queue_depth == 1003)
        model.gate.set()
        await asyncio.gather(blocker, *flood, *light)

    run(model, config(max_batch_size=8, max_queue_size=2000), scenario)

    batches_with_light = [i for i, b in enumerate(model.batches) if (b["x"] == 1.0).any()]
    assert len(model.batches) > 100
    assert batches_with_light and max(batches_with_light) <= 3


def test_a_higher_priority_request_overtakes_queued_lower_priority_ones():
    model = Model()

    async def scenario(batcher: DynamicBatcher) -> None:
        blocker = await hold_the_only_slot(batcher, model)
        low = [batcher.submit("t", 1.0, x(i), priority=2) for i in range(3)]
        high = batcher.submit("u", 1.0, x(7.0), priority=1)
        tasks = [asyncio.ensure_future(c) for c in [*low, high]]
        await until(lambda: batcher.queue_depth == 4)
        model.gate.set()
        await asyncio.gather(blocker, *tasks)

    run(model, config(max_batch_size=1), scenario)

    assert model.seen() == [-1.0, 7.0, 0.0, 1.0, 2.0]


def test_batches_run_concurrently_up_to_max_concurrent_batches():
    both_running = threading.Barrier(2, timeout=2)

    def rendezvous(inputs: Tensors) -> Tensors:
        both_running.wait()  # raises BrokenBarrierError unless two batches overlap
        return double(inputs)

    async def scenario(batcher: DynamicBatcher) -> list[Tensors]:
        return await asyncio.gather(
            batcher.submit("a", 1.0, x(1.0)), batcher.submit("b", 1.0, x(2.0))
        )

    settings = config(max_batch_size=1, max_concurrent_batches=2)
    results = run(Model(rendezvous), settings, scenario, workers=2)

    assert [r["y"].item() for r in results] == [2.0, 4.0]


def test_on_batch_and_stats_report_sizes_waits_and_depth():
    sizes: list[int] = []
    waits: list[float] = []

    async def scenario(batcher: DynamicBatcher) -> Any:
        await asyncio.gather(*(batcher.submit("t", 1.0, x(i, i)) for i in range(3)))
        return batcher.stats

    settings = config(max_batch_size=6, max_queue_delay_s=5.0)
    stats = run(Model(), settings, scenario, sizes=sizes, waits=waits)

    assert sizes == [6]
    assert len(waits) == 3 and all(0 <= w < 2.0 for w in waits)
    assert (stats.batches, stats.requests, stats.rows) == (1, 3, 6)
    assert stats.batch_sizes == {6: 1}
    assert stats.queue_depth == 0


@pytest.mark.parametrize(
    "inputs",
    [
        {},
        {"x": np.ones((9, 1), np.float32)},
        {"x": np.ones((2, 1), np.float32), "z": np.ones((3, 1), np.float32)},
        {"x": np.float32(1.0) * np.ones((), np.float32)},
    ],
    ids=["no-inputs", "over-max-batch", "ragged-rows", "scalar"],
)
def test_malformed_requests_are_invalid_input(inputs):
    async def scenario(batcher: DynamicBatcher) -> None:
        with pytest.raises(InvalidInput):
            await batcher.submit("t", 1.0, inputs)

    run(Model(), config(max_batch_size=8), scenario)


def test_submit_before_start_is_unavailable():
    async def scenario(pool: ThreadPoolExecutor) -> None:
        batcher = DynamicBatcher(Model(), pool, config())
        with pytest.raises(Unavailable, match="not started"):
            await batcher.submit("t", 1.0, x(1.0))

    with ThreadPoolExecutor(max_workers=1) as pool:
        asyncio.run(scenario(pool))


def test_a_request_that_expires_while_its_batch_waits_for_company_is_not_executed():
    model = Model()

    async def scenario(batcher: DynamicBatcher) -> None:
        with pytest.raises(DeadlineExceeded):
            await batcher.submit("t", 1.0, x(99.0), deadline=time.monotonic() + 0.02)
        await batcher.submit("t", 1.0, x(2.0))

    run(model, config(max_queue_delay_s=0.1, dispatch_when_idle=False), scenario)

    assert model.seen() == [2.0]


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_batch_size": 0},
        {"max_queue_delay_s": -0.1},
        {"preferred_batch_sizes": [9]},
        {"max_queue_size": -1},
        {"default_priority_level": 0},
        {"max_concurrent_batches": 0},
    ],
)
def test_nonsensical_batching_configs_are_rejected(overrides):
    with pytest.raises(ValueError):
        config(**overrides)
