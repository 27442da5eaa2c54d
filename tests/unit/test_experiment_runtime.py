"""A process's experiments against a real experiments database: changes are picked up
at each tick, and no count is lost when an experiment changes or stops under traffic."""

from __future__ import annotations

import asyncio

from cloud_gateway.experiments import Arm, Experiments, ExperimentSpec, ExperimentStore
from cloud_gateway.metrics import GatewayMetrics

ARMS = (Arm("1", "split", 1), Arm("2", "split", 1))


def scenario(tmp_path, steps):
    async def never_mirrored(model, version, inputs):
        raise AssertionError("no shadow in these experiments")

    async def main():
        experiments = Experiments(tmp_path / "experiments.db", GatewayMetrics(), interval_s=60)
        await experiments.start(never_mirrored)
        try:
            with ExperimentStore(tmp_path / "experiments.db") as store:
                return await steps(experiments, store)
        finally:
            await experiments.close()

    return asyncio.run(main())


def test_an_experiment_created_in_the_database_is_active_after_a_tick(tmp_path):
    async def steps(experiments, store):
        store.create(ExperimentSpec("e", "m", ARMS))
        before = "m" in experiments.active
        await experiments.tick()
        return before, experiments.active["m"].name

    assert scenario(tmp_path, steps) == (False, "e")


def test_a_stopped_arm_updates_the_live_experiment_in_place(tmp_path):
    async def steps(experiments, store):
        store.create(ExperimentSpec("e", "m", ARMS))
        await experiments.tick()
        live = experiments.active["m"]
        arm = live.assign("some-user")
        store.stop_arm("e", "2", "test")
        await experiments.tick()
        live.served(arm, "", None, 0.001)  # a request admitted before the change ends now
        await experiments.tick()
        return experiments.active["m"] is live, store.totals("e")[arm.version].requests

    assert scenario(tmp_path, steps) == (True, 1)


def test_requests_in_flight_when_an_experiment_stops_are_still_counted(tmp_path):
    async def steps(experiments, store):
        store.create(ExperimentSpec("e", "m", ARMS))
        await experiments.tick()
        live = experiments.active["m"]
        store.stop("e", "operator")
        await experiments.tick()
        live.served(live.control, "", None, 0.001)  # admitted before the stop
        await experiments.tick()
        return "m" in experiments.active, store.totals("e")["1"].requests

    assert scenario(tmp_path, steps) == (False, 1)
