"""The demo's experiment: one model's traffic split across two versions by a sticky user
key, a broken third version mirrored as a shadow, labels sent back, per-arm figures."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from rich.console import Console

from cloud_gateway.experiments import Arm, ExperimentSpec, ExperimentStore, Settings
from cloud_gateway.experiments.cli import show_experiment
from edgeserve.bench.experiment_harness import experiment_repository
from edgeserve.eval.stack import CascadeStack
from edgeserve.polling import wait_until

MODEL = "digits-ab"
USERS = 60


def show_experiment_demo(
    console: Console,
    stack: CascadeStack,
    http: httpx.Client,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
) -> None:
    console.rule("6. an experiment: v1 (CNN) vs v2 (edge MLP) by user, a broken v3 as shadow")
    state = stack.workdir / "gateway-state"
    experiment_repository(state / "models", MODEL)  # the running gateway rescans its folder
    arms = (Arm("1", "split", 80), Arm("2", "split", 20), Arm("3", "shadow"))
    spec = ExperimentSpec("demo-ab", MODEL, arms, key_header="x-user",
                          settings=Settings(feedback=True))  # fmt: skip
    with ExperimentStore(state / "experiments.db") as store:
        store.create(spec)
        console.print(
            f"experiment demo-ab on {MODEL}: 80% of users on v1, 20% on v2 (sticky by the "
            "x-user header), every v1 request mirrored to v3; created in the experiments "
            "database, picked up by the gateway at its next flush (0.5 s)"
        )
        auth = {"Authorization": f"Bearer {stack.app_key}"}
        wait_until(lambda: _arm(http, auth, x[0]) is not None, 30, "the experiment")
        replies = _traffic(http, auth, x, y)
        sticky = _sticky(replies)
        console.print(
            f"{len(replies)} digits from {USERS} users, 32 at a time, each answer's label sent "
            f"back (POST /v2/models/{MODEL}/feedback): every user stayed on one arm: {sticky}"
        )
        # The counts reach the database at each flush; wait for the labels of this traffic.
        wait_until(lambda: _scored(store) >= len(replies), 30, "the labels to be scored")
        show_experiment(console, store.get("demo-ab"), store.totals("demo-ab"))
        store.stop("demo-ab", "demo over")


def _arm(http: httpx.Client, auth: dict[str, str], row: npt.NDArray[np.float32]) -> str | None:
    headers = {**auth, "x-user": "probe"}
    reply = http.post(f"/v2/models/{MODEL}/infer", json=_body(row), headers=headers)
    arm: str | None = reply.json().get("parameters", {}).get("arm")
    return arm


def _traffic(
    http: httpx.Client,
    auth: dict[str, str],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
) -> list[tuple[str, str]]:
    def one(i: int) -> tuple[str, str]:
        user = f"user-{i % USERS}"
        reply = http.post(f"/v2/models/{MODEL}/infer", json=_body(x[i]),
                          headers={**auth, "x-user": user}).json()  # fmt: skip
        label = {"id": reply["id"], "labels": [int(y[i])]}
        http.post(f"/v2/models/{MODEL}/feedback", json=label, headers=auth)
        return user, reply["parameters"]["arm"]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        return list(pool.map(one, range(len(x))))


def _sticky(replies: list[tuple[str, str]]) -> bool:
    seen: dict[str, set[str]] = {}
    for user, arm in replies:
        seen.setdefault(user, set()).add(arm)
    return all(len(arms) == 1 for arms in seen.values())


def _scored(store: ExperimentStore) -> int:
    totals = store.totals("demo-ab")
    return sum(totals[version].labelled for version in ("1", "2") if version in totals)


def _body(row: npt.NDArray[np.float32]) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                        "data": np.asarray(row, np.float32).tolist()}]}  # fmt: skip
