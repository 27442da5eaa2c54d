"""One live experiment in one process: the shadow never holds the primary up."""

from __future__ import annotations

import asyncio

import numpy as np

from cloud_gateway.experiments import Arm, ExperimentSpec, LiveExperiment, Mirrored, Settings
from cloud_gateway.repository.config import ModelConfig, TensorSpec

CONFIG = ModelConfig(
    name="m",
    inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 2])],
    outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, 2])],
    labels=["a", "b"],
    logits_output="logits",
)
SPEC = ExperimentSpec(
    "exp",
    "m",
    (Arm("1", "split", 1), Arm("2", "shadow")),
    settings=Settings(shadow_queue=4, feedback=True),
)


def mirrored(request_id: str, control: list[str]) -> Mirrored:
    x = np.zeros((len(control), 2), np.float32)
    return Mirrored(request_id, {"input": x}, control, {"logits": x})


def test_a_full_shadow_queue_drops_copies_and_counts_them():
    async def scenario() -> tuple[list[bool], int]:
        release = asyncio.Event()

        async def slow_shadow(model, version, inputs):
            await release.wait()
            return CONFIG, {"logits": np.array([[0.0, 1.0]], np.float32)}

        live = LiveExperiment(SPEC, slow_shadow)
        accepted = [live.mirror(mirrored(str(i), ["b"])) for i in range(10)]
        release.set()
        await live.close()
        tallies, _ = live.take()
        return accepted, tallies["2"].dropped

    accepted, dropped = asyncio.run(scenario())
    assert accepted == [True] * 4 + [False] * 6  # the queue holds shadow_queue = 4
    assert dropped == 6


def test_the_shadow_compares_each_row_with_the_control_and_records_its_answer():
    async def scenario() -> LiveExperiment:
        async def shadow(model, version, inputs):
            return CONFIG, {"logits": np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)}

        live = LiveExperiment(SPEC, shadow)
        live.mirror(mirrored("r1", ["b", "b"]))
        while not live._queue.empty() or not live._tallies:
            await asyncio.sleep(0.001)
        await live.close()
        return live

    live = asyncio.run(scenario())
    tallies, predictions = live.take()
    assert (tallies["2"].compared, tallies["2"].agreed) == (2, 1)
    assert [(p.request_id, p.version, p.labels) for p in predictions] == [("r1", "2", ["b", "a"])]


def test_a_failing_shadow_counts_errors_not_agreement():
    async def scenario() -> LiveExperiment:
        async def broken(model, version, inputs):
            from edgeserve.wire.errors import Unavailable

            raise Unavailable("queue full")

        live = LiveExperiment(SPEC, broken)
        live.mirror(mirrored("r1", ["b"]))
        while not live._tallies:
            await asyncio.sleep(0.001)
        await live.close()
        return live

    tallies, _ = asyncio.run(scenario()).take()
    assert (tallies["2"].requests, tallies["2"].errors, tallies["2"].compared) == (1, 1, 0)


def test_answers_are_recorded_only_when_the_experiment_takes_feedback():
    async def scenario(feedback: bool) -> int:
        spec = ExperimentSpec("e", "m", SPEC.arms, settings=Settings(feedback=feedback))
        live = LiveExperiment(spec, lambda *args: None)  # no copy is ever mirrored here
        live.served(spec.control, "r1", ["a"], 0.001)
        await live.close()
        return len(live.take()[1])

    assert asyncio.run(scenario(True)) == 1
    assert asyncio.run(scenario(False)) == 0
