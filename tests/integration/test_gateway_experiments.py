"""Experiments on a real gateway process: a model's traffic split across versions by a
sticky key over REST and gRPC, a shadow that is compared but never answers, labels that
come back, arms stopped by the sequential tests, and the operator's CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import httpx
import numpy as np
import pytest

from cloud_gateway.experiments import Arm, ExperimentSpec, ExperimentStore, Settings
from edgeserve.bench.experiment_harness import experiment_repository
from edgeserve.polling import wait_until
from edgeserve.wire import oip_grpc
from edgeserve.wire.proto import grpc_service_pb2_grpc as pb_grpc
from edgeserve.wire.tensors import InferRequest, InferTensor

pytestmark = pytest.mark.integration
MODEL = "digits-cloud"
INFER = f"/v2/models/{MODEL}/infer"
FEEDBACK = f"/v2/models/{MODEL}/feedback"


@pytest.fixture
def gateway(start_gateway, tmp_path):
    repository = experiment_repository(tmp_path / "models")
    tenants = {
        "app": {"rate_per_s": 10_000, "burst": 10_000, "max_in_flight": 256},
        "other": {"allowed_models": ["digits-edge-fp32"]},
    }
    return start_gateway(tenants, repository=str(repository))


def create(gateway, spec: ExperimentSpec) -> None:
    with ExperimentStore(gateway.state_dir / "experiments.db") as store:
        store.create(spec)


def body(x: np.ndarray, **parameters) -> dict:
    document = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.reshape(-1).tolist()}]}  # fmt: skip
    if parameters:
        document["parameters"] = parameters
    return document


def client(gateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.http, headers=gateway.headers("app"), timeout=30)


def wait_for_experiment(http: httpx.Client, row: np.ndarray, name: str, **headers) -> None:
    def active() -> bool:
        reply = http.post(INFER, json=body(row), headers=headers)
        return reply.json()["parameters"].get("experiment") == name

    wait_until(active, 10, f"experiment {name} to be active")


def totals(gateway, name: str):
    with ExperimentStore(gateway.state_dir / "experiments.db") as store:
        return store.totals(name)


def cli(gateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGESERVE_GATEWAY_STATE_DIR": str(gateway.state_dir),
           "EDGESERVE_GATEWAY_REPOSITORY": str(gateway.state_dir.parent / "models"),
           "COLUMNS": "200"}  # fmt: skip
    command = [sys.executable, "-m", "edgeserve", "gateway", "experiment", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def grpc_arm(gateway, row: np.ndarray, user: str) -> str:
    request = InferRequest(MODEL, [InferTensor.from_numpy("input", row)])
    metadata = (("authorization", f"Bearer {gateway.keys['app']}"), ("x-user", user))
    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(oip_grpc.request_to_proto(request), metadata=metadata)
    return oip_grpc.response_from_proto(reply).parameters["arm"]


def test_a_users_requests_go_to_one_arm_over_rest_and_grpc(gateway, digits):
    x, _ = digits
    create(gateway, ExperimentSpec("ab", MODEL, (Arm("1", "split", 50), Arm("2", "split", 50)),
                                   key_header="x-user"))  # fmt: skip
    with client(gateway) as http:
        wait_for_experiment(http, x[:1], "ab")
        seen = {}
        for i in range(40):
            user = f"user-{i % 10}"
            reply = http.post(INFER, json=body(x[i : i + 1]), headers={"x-user": user}).json()
            assert reply["model_version"] == reply["parameters"]["arm"]
            seen.setdefault(user, set()).add(reply["parameters"]["arm"])
    assert all(len(arms) == 1 for arms in seen.values())  # sticky
    assert set().union(*seen.values()) == {"1", "2"}  # and both arms serve
    for user, arms in seen.items():
        assert grpc_arm(gateway, x[:1], user) in arms  # the same arm over gRPC metadata


def test_the_key_can_come_from_the_requests_parameters(gateway, digits):
    x, _ = digits
    create(gateway, ExperimentSpec("by-param", MODEL, (Arm("1", "split", 1), Arm("2", "split", 1)),
                                   key_parameter="user"))  # fmt: skip
    with client(gateway) as http:
        wait_for_experiment(http, x[:1], "by-param")
        arms = {
            u: {http.post(INFER, json=body(x[:1], user=u)).json()["parameters"]["arm"]
                for _ in range(5)}
            for u in ("ann", "bob", "cy", "dee", "eve", "fay")
        }  # fmt: skip
    assert all(len(found) == 1 for found in arms.values())


def test_a_request_that_names_a_version_bypasses_the_experiment(gateway, digits):
    x, _ = digits
    create(gateway, ExperimentSpec("ab", MODEL, (Arm("1", "split", 1), Arm("2", "split", 1))))
    with client(gateway) as http:
        wait_for_experiment(http, x[:1], "ab")
        reply = http.post(f"/v2/models/{MODEL}/versions/2/infer", json=body(x[:1])).json()
    assert reply["model_version"] == "2" and "experiment" not in reply["parameters"]


def test_a_shadow_never_answers_and_a_broken_one_is_stopped_by_the_test(gateway, digits):
    x, _ = digits
    create(gateway, ExperimentSpec("shadow", MODEL, (Arm("1", "split", 1), Arm("3", "shadow"))))
    with client(gateway) as http:
        wait_for_experiment(http, x[:1], "shadow")
        for i in range(200):
            reply = http.post(INFER, json=body(x[i : i + 1])).json()
            assert (reply["model_version"], reply["parameters"]["arm"]) == ("1", "1")

    def shadow_stopped() -> str | None:
        with ExperimentStore(gateway.state_dir / "experiments.db") as store:
            return store.get("shadow").spec.arm("3 (shadow)").stopped

    reason = wait_until(shadow_stopped, 10, "the broken shadow to be stopped")
    assert "agreement" in reason or "accuracy" in reason
    assert totals(gateway, "shadow")["3"].compared > 0
    metrics = httpx.get(f"{gateway.http}/metrics").text
    assert (
        'edgeserve_gateway_experiment_shadow_compared_total{agreed="no",experiment="shadow"}'
        in metrics
    )


def test_a_shadow_compares_every_row_of_large_requests(gateway, digits):
    x, _ = digits
    # Version 2 (the edge MLP) mostly agrees with the control: it is not stopped.
    arms = (Arm("1", "split", 1), Arm("2", "shadow"))
    create(gateway, ExperimentSpec("rows", MODEL, arms, settings=Settings(min_agreement=0.5)))
    with client(gateway) as http:
        wait_for_experiment(http, x[:1], "rows")
        before = totals(gateway, "rows").get("2")
        sent = 0
        for i in range(12):  # 40 rows each: stacked copies pass max_batch_size (64)
            assert http.post(INFER, json=body(x[i * 40 : i * 40 + 40])).status_code == 200
            sent += 40

    def compared() -> int:
        shadow = totals(gateway, "rows").get("2")
        return shadow.compared - (before.compared if before else 0) if shadow else 0

    wait_until(lambda: compared() >= sent, 10, "every mirrored row to be compared")
    shadow = totals(gateway, "rows")["2"]
    assert shadow.errors == 0
    assert shadow.agreed / shadow.compared > 0.9


def test_labels_sent_back_score_each_arms_accuracy(gateway, digits):
    x, y = digits
    arms = (Arm("1", "split", 1), Arm("2", "split", 1))
    feedback = Settings(feedback=True)
    create(gateway, ExperimentSpec("acc", MODEL, arms, key_parameter="user", settings=feedback))
    with client(gateway) as http:
        wait_for_experiment(http, x[:1], "acc")
        for i in range(60):
            reply = http.post(INFER, json=body(x[i : i + 2], user=str(i))).json()
            label = http.post(FEEDBACK, json={"id": reply["id"], "labels": y[i : i + 2].tolist()})
            assert label.status_code == 200, label.text

    def scored() -> int:
        return sum(t.labelled for t in totals(gateway, "acc").values()) == 120

    wait_until(scored, 10, "every label to be scored")
    arms = totals(gateway, "acc")
    assert all(t.correct / t.labelled > 0.85 for t in arms.values())


def test_bad_feedback_gets_a_precise_error(gateway, digits):
    x, _ = digits
    arms = (Arm("1", "split", 1), Arm("2", "split", 1))
    create(gateway, ExperimentSpec("fb", MODEL, arms, settings=Settings(feedback=True)))
    with client(gateway) as http:
        wait_for_experiment(http, x[:1], "fb")
        no_json = http.post(FEEDBACK, content=b"{not json")
        no_labels = http.post(FEEDBACK, json={"id": "abc"})
        no_experiment = http.post("/v2/models/digits-edge-fp32/feedback",
                                  json={"id": "abc", "labels": ["1"]})  # fmt: skip
    forbidden = httpx.post(f"{gateway.http}{FEEDBACK}", json={"id": "a", "labels": ["1"]},
                           headers=gateway.headers("other"))  # fmt: skip
    assert (no_json.status_code, no_labels.status_code) == (400, 400)
    assert "labels" in no_labels.json()["error"]
    assert no_experiment.status_code == 404
    assert forbidden.status_code == 403


def test_operators_create_show_and_stop_from_the_cli(gateway, digits):
    x, _ = digits
    refused = cli(gateway, "create", "bad", "--model", MODEL, "--split", "1=90,9=10")
    assert refused.returncode == 1 and "serves versions" in refused.stdout
    made = cli(gateway, "create", "cli", "--model", MODEL, "--split", "1=90,2=10",
               "--shadow", "3", "--key-header", "x-user")  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    with client(gateway) as http:
        wait_for_experiment(http, x[:1], "cli")
        unasked = http.post(FEEDBACK, json={"id": "abc", "labels": ["1"]})
        assert unasked.status_code == 409 and "--feedback" in unasked.json()["error"]
        for i in range(30):
            http.post(INFER, json=body(x[i : i + 1]), headers={"x-user": str(i)})
        shown = cli(gateway, "show", "cli")
        assert (
            shown.returncode == 0 and "1 control" in shown.stdout and "always-valid" in shown.stdout
        )
        assert cli(gateway, "stop", "cli").returncode == 0

        def back_to_default() -> bool:
            return "experiment" not in http.post(INFER, json=body(x[:1])).json()["parameters"]

        wait_until(back_to_default, 10, "traffic to leave the stopped experiment")
    listed = cli(gateway, "show")
    assert "stopped by an operator" in listed.stdout


@pytest.mark.slow
def test_with_two_workers_every_workers_counts_reach_the_database(start_gateway, tmp_path, digits):
    x, _ = digits
    repository = experiment_repository(tmp_path / "models")
    tenants = {"app": {"rate_per_s": 10_000, "burst": 10_000}}
    gateway = start_gateway(tenants, repository=str(repository), workers="2")
    create(gateway, ExperimentSpec("two", MODEL, (Arm("1", "split", 1), Arm("2", "split", 1))))
    served = 0
    for _ in range(80):  # a new connection each: the kernel spreads them over the workers
        with client(gateway) as http:
            reply = http.post(INFER, json=body(x[:1])).json()
        served += reply["parameters"].get("experiment") == "two"
    assert served >= 40  # each worker picked the experiment up within its first ticks

    def counted() -> int:
        return sum(t.requests for t in totals(gateway, "two").values())

    wait_until(lambda: counted() >= served, 10, "both workers' counts to be flushed")
    assert counted() == served  # nothing lost, nothing counted twice
    metrics = (gateway.state_dir / "run" / "metrics").glob("counter_*.db")
    assert len({path.stem.split("_")[1] for path in metrics}) == 2  # both workers served
