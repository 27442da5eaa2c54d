"""The edge agent as a real process: OIP v2 over loopback HTTP, offline, with bad input."""

from __future__ import annotations

import gzip

import httpx
import numpy as np
import orjson
import pytest

from edgeserve.artifacts import packaged_artifacts
from edgeserve.client import OipError, OipHttpClient
from edgeserve.wire.model_card import ModelCard
from models.data import load_split

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def test_split():
    return load_split(packaged_artifacts(), "test")


@pytest.fixture
def agent(start_agent):
    return start_agent(models=["digits-edge", "digits-edge-tflite"])


@pytest.fixture
def client(agent):
    with OipHttpClient(f"http://127.0.0.1:{agent.port}") as oip:
        yield oip


def _infer_json(client: OipHttpClient, body: bytes, model: str = "digits-edge", **headers: str):
    return client._http.post(f"/v2/models/{model}/infer", content=body, headers=headers)


def test_health_and_server_metadata_answer(client):
    assert client.live() and client.ready()
    assert client._http.get("/v2").json()["name"] == "edgeserve-agent"


def test_model_metadata_describes_the_card_signature(client):
    metadata = client.model_metadata("digits-edge")
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]


def test_answer_carries_confidence_tier_and_version(client, test_split):
    x, _ = test_split
    answer = client.infer("digits-edge", {"input": x[:1]})
    assert answer.output("logits").data.shape == (1, 10)
    assert answer.parameters["tier"] == "edge"
    assert answer.parameters["model_version"] == "1"
    assert 0.1 <= answer.parameters["confidence"][0] <= 1.0


def test_json_and_binary_requests_give_the_same_answer(client, test_split):
    x, _ = test_split
    binary = client.infer("digits-edge", {"input": x[:4]}, binary=True)
    plain = client.infer("digits-edge", {"input": x[:4]}, binary=False)
    np.testing.assert_allclose(binary.output("logits").data, plain.output("logits").data, 1e-6)


def test_versioned_path_serves_the_active_version_and_404s_others(client, test_split):
    x, _ = test_split
    assert client.infer("digits-edge", {"input": x[:1]}, version="1").model_version == "1"
    with pytest.raises(OipError) as error:
        client.infer("digits-edge", {"input": x[:1]}, version="7")
    assert error.value.status == 404


def test_rest_accuracy_matches_the_model_card(client, test_split):
    x, y = test_split
    answer = client.infer("digits-edge", {"input": x[:64]})
    accuracy = float(np.mean(answer.output("logits").data.argmax(axis=1) == y[:64]))
    card = ModelCard.load(packaged_artifacts() / "digits-edge.card.json")
    assert card.metrics is not None
    assert accuracy >= card.metrics.test_accuracy - 0.05


def test_repeated_input_is_answered_from_the_cache(client, test_split):
    x, _ = test_split
    first = client.infer("digits-edge", {"input": x[5:6]})
    second = client.infer("digits-edge", {"input": x[5:6]})
    assert (first.parameters["cache_hit"], second.parameters["cache_hit"]) == (False, True)
    np.testing.assert_array_equal(first.output("logits").data, second.output("logits").data)


def test_gzip_encoded_body_is_accepted(client, test_split):
    x, _ = test_split
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x[0].tolist()}]}
    )
    reply = _infer_json(client, gzip.compress(body), **{"Content-Encoding": "gzip"})
    assert reply.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{oops", 400, "malformed JSON"),
        (
            orjson.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 64],
                            "datatype": "FP32",
                            "data": [float("nan")] + [0.0] * 63,
                        }
                    ]
                }
            ),
            400,
            "NaN",
        ),
        (
            orjson.dumps(
                {
                    "inputs": [
                        {"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.0] * 32}
                    ]
                }
            ),
            400,
            "shape",
        ),
        (
            orjson.dumps(
                {
                    "inputs": [
                        {"name": "input", "shape": [1, 64], "datatype": "INT64", "data": [0] * 64}
                    ]
                }
            ),
            400,
            "must be FP32",
        ),
    ],
    ids=["malformed-json", "nan", "wrong-shape", "wrong-dtype"],
)
def test_bad_request_gets_an_oip_error_and_the_agent_keeps_serving(
    client, test_split, body, status, message
):
    reply = _infer_json(client, body)
    assert reply.status_code == status
    assert message in reply.json()["error"]
    x, _ = test_split
    assert client.infer("digits-edge", {"input": x[:1]}).model_name == "digits-edge"


def test_unknown_model_is_404(client):
    reply = _infer_json(client, b"{}", model="no-such-model")
    assert reply.status_code == 404
    assert "unknown model" in reply.json()["error"]


def test_oversized_body_is_413(start_agent):
    agent = start_agent(max_body_bytes="2048")
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [64, 64], "datatype": "FP32", "data": [0.0] * 4096}]}
    )
    reply = httpx.post(f"http://127.0.0.1:{agent.port}/v2/models/digits-edge/infer", content=body)
    assert reply.status_code == 413


def test_rejections_are_counted_in_metrics(client):
    _infer_json(client, b"{oops")
    _infer_json(client, b"{}", model="missing")
    text = client.metrics()
    assert 'edgeserve_agent_errors_total{code="invalid_input"} 1.0' in text
    assert 'edgeserve_agent_errors_total{code="not_found"} 1.0' in text


def test_tflite_and_onnx_models_agree_on_the_test_split(client, test_split):
    x, _ = test_split
    onnx_top = client.infer("digits-edge", {"input": x[:64]}).output("logits").data.argmax(1)
    tflite = client.infer("digits-edge-tflite", {"input": x[:64]})
    assert tflite.parameters["runtime"] == "tflite"
    agreement = np.mean(onnx_top == tflite.output("logits").data.argmax(1))
    assert agreement >= 0.95  # int8 vs fp32 here; fp32-vs-fp32 agreement is a unit test


def test_agent_serves_on_a_unix_socket_too(start_agent, tmp_path):
    path = tmp_path / "agent.sock"
    start_agent(unix_socket=str(path))
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport, base_url="http://agent") as http:
        assert http.get("/v2/health/ready").status_code == 200


def test_sigterm_stops_the_agent_cleanly(start_agent):
    agent = start_agent()
    assert agent.stop() == 0


def test_tampered_model_is_never_served(start_agent, tmp_path):
    state = tmp_path / "tamper-state"
    first = start_agent(state_dir=state)
    first.stop()
    artifact = next((state / "models" / "digits-edge").glob("slot-*/digits-edge.onnx"))
    artifact.write_bytes(artifact.read_bytes()[:-10])
    agent = start_agent(state_dir=state)
    with OipHttpClient(f"http://127.0.0.1:{agent.port}") as oip:
        assert not oip.ready()
        with pytest.raises(OipError) as error:
            oip.infer("digits-edge", {"input": np.zeros((1, 64), np.float32)})
        assert error.value.status == 404
        assert 'edgeserve_agent_integrity_failures_total{model="digits-edge"} 1.0' in oip.metrics()
