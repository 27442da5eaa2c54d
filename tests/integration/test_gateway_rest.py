"""The cloud gateway as a real process, over REST: OIP v2, tenancy, batching, bad input."""

from __future__ import annotations

import concurrent.futures

import httpx
import numpy as np
import orjson
import pytest

pytestmark = pytest.mark.integration
MODEL = "digits-cloud"


@pytest.fixture
def gateway(start_gateway):
    return start_gateway(
        tenants={
            "alpha": {
                "allowed_models": [MODEL],
                "rate_per_s": 1000,
                "burst": 1000,
                "max_in_flight": 256,
            },
            "beta": {"allowed_models": ["digits-edge-fp32"], "rate_per_s": 1000, "burst": 1000},
            "admin": {"allowed_models": ["*"], "rate_per_s": 1000, "burst": 1000},
        }
    )


def _body(x: np.ndarray, **parameters) -> bytes:
    document = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.reshape(-1).tolist(),
            }
        ]
    }
    if parameters:
        document["parameters"] = parameters
    return orjson.dumps(document)


def _infer(gateway, tenant: str | None, body: bytes, model: str = MODEL) -> httpx.Response:
    headers = gateway.headers(tenant) if tenant else {}
    return httpx.post(f"{gateway.http}/v2/models/{model}/infer", content=body, headers=headers)


def test_health_needs_no_key_and_reports_ready(gateway):
    assert httpx.get(f"{gateway.http}/v2/health/live").status_code == 200
    assert httpx.get(f"{gateway.http}/v2/health/ready").status_code == 200


def test_infer_answers_with_cloud_tier_parameters(gateway, digits):
    x, y = digits
    reply = _infer(gateway, "alpha", _body(x[:8]))
    assert reply.status_code == 200, reply.text
    document = reply.json()
    assert document["parameters"]["tier"] == "cloud"
    logits = np.array(document["outputs"][0]["data"]).reshape(8, 10)
    assert np.mean(logits.argmax(1) == y[:8]) >= 0.75


def test_missing_and_bad_keys_are_401(gateway, digits):
    x, _ = digits
    assert _infer(gateway, None, _body(x[:1])).status_code == 401
    reply = httpx.post(
        f"{gateway.http}/v2/models/{MODEL}/infer",
        content=_body(x[:1]),
        headers={"Authorization": "Bearer es_nope_nope"},
    )
    assert reply.status_code == 401
    assert "error" in reply.json()


def test_tenant_cannot_call_or_list_another_tenants_model(gateway, digits):
    x, _ = digits
    assert _infer(gateway, "beta", _body(x[:1]), model=MODEL).status_code == 403
    index = httpx.post(f"{gateway.http}/v2/repository/index", headers=gateway.headers("beta"))
    assert {row["name"] for row in index.json()} == {"digits-edge-fp32"}
    metadata = httpx.get(f"{gateway.http}/v2/models/{MODEL}", headers=gateway.headers("beta"))
    assert metadata.status_code == 403


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{broken", 400, "malformed JSON"),
        (_body(np.zeros((1, 32), np.float32)), 400, "shape"),
        (_body(np.full((1, 64), np.nan, np.float32)), 400, "NaN"),
    ],
    ids=["malformed", "shape", "nan"],
)
def test_bad_input_is_refused_and_the_gateway_keeps_serving(gateway, digits, body, status, message):
    reply = _infer(gateway, "alpha", body)
    assert reply.status_code == status and message in reply.json()["error"]
    assert _infer(gateway, "alpha", _body(digits[0][:1])).status_code == 200


def test_unknown_model_is_404(gateway, digits):
    assert _infer(gateway, "admin", _body(digits[0][:1]), model="nope").status_code == 404


def test_oversized_body_is_413(start_gateway):
    gateway = start_gateway(max_body_bytes="4096")
    reply = _infer(gateway, "app", _body(np.zeros((64, 64), np.float32)))
    assert reply.status_code == 413


def test_expired_timeout_is_504_and_not_run(gateway, digits):
    reply = _infer(gateway, "alpha", _body(digits[0][:1], timeout=1))
    assert reply.status_code == 504


def test_rate_limit_gives_429_with_retry_after(start_gateway, digits):
    gateway = start_gateway(tenants={"slow": {"rate_per_s": 0.5, "burst": 2}})
    replies = [_infer(gateway, "slow", _body(digits[0][:1])) for _ in range(4)]
    assert [r.status_code for r in replies[:2]] == [200, 200]
    assert replies[-1].status_code == 429
    assert int(replies[-1].headers["Retry-After"]) >= 1


def test_throttled_requests_are_counted_against_their_tenant(start_gateway, digits):
    gateway = start_gateway(
        tenants={"slow": {"rate_per_s": 0.5, "burst": 1}, "other": {"rate_per_s": 1000}}
    )
    codes = [_infer(gateway, "slow", _body(digits[0][:1])).status_code for _ in range(3)]
    _infer(gateway, "other", _body(digits[0][:1]))
    metrics = httpx.get(f"{gateway.http}/metrics").text
    refused = codes.count(429)
    assert refused >= 1
    assert (
        f'edgeserve_gateway_throttled_total{{limit="RateLimited",tenant="slow"}} {refused:.1f}'
        in (metrics)
    )
    assert 'tenant="other"' not in "".join(
        line for line in metrics.splitlines() if line.startswith("edgeserve_gateway_throttled")
    )


def test_concurrent_requests_are_batched_and_results_match_unbatched(gateway, digits):
    x, _ = digits
    alone = [
        np.array(_infer(gateway, "alpha", _body(x[i : i + 1])).json()["outputs"][0]["data"])
        for i in range(32)
    ]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(lambda i: _infer(gateway, "alpha", _body(x[i : i + 1])), range(32)))
    for i, reply in enumerate(replies):
        np.testing.assert_allclose(
            reply.json()["outputs"][0]["data"], alone[i], rtol=1e-5, atol=1e-5
        )
    metrics = httpx.get(f"{gateway.http}/metrics").text
    batch_rows = [
        line
        for line in metrics.splitlines()
        if line.startswith("edgeserve_gateway_batch_size_bucket") and 'le="1.0"' in line
    ]
    count_line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("edgeserve_gateway_batch_size_count")
    )
    assert 'edgeserve_gateway_queue_depth{model="digits-cloud/1"}' in metrics
    single = float(batch_rows[0].split()[-1])
    assert float(count_line.split()[-1]) > single, "some batch held more than one request"


def test_admin_can_unload_and_load_a_model(gateway, digits):
    headers = gateway.headers("admin")
    assert (
        httpx.post(f"{gateway.http}/v2/repository/models/{MODEL}/load", headers=headers).status_code
        == 200
    )
    ready = httpx.get(f"{gateway.http}/v2/models/{MODEL}/ready", headers=headers)
    assert ready.status_code == 200
    assert (
        httpx.post(
            f"{gateway.http}/v2/repository/models/{MODEL}/unload", headers=headers
        ).status_code
        == 200
    )
    assert httpx.get(f"{gateway.http}/v2/models/{MODEL}/ready", headers=headers).status_code == 400
    assert _infer(gateway, "admin", _body(digits[0][:1])).status_code == 200  # lazy reload


def test_non_admin_tenant_may_not_unload(gateway):
    reply = httpx.post(
        f"{gateway.http}/v2/repository/models/{MODEL}/unload", headers=gateway.headers("alpha")
    )
    assert reply.status_code == 403


def test_a_flooding_tenant_is_throttled_while_another_is_served(start_gateway, digits):
    gateway = start_gateway(
        tenants={
            "flood": {"rate_per_s": 2, "burst": 5, "max_in_flight": 8},
            "quiet": {"rate_per_s": 1000, "burst": 1000},
        }
    )
    body = _body(digits[0][:1])
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        flood = [pool.submit(_infer, gateway, "flood", body) for _ in range(200)]
        quiet = [_infer(gateway, "quiet", body) for _ in range(20)]
        flood_codes = [f.result().status_code for f in flood]
    assert all(reply.status_code == 200 for reply in quiet)
    assert flood_codes.count(429) >= 150
    assert set(flood_codes) <= {200, 429}


def test_tritonclient_http_works_against_the_gateway(gateway, digits):
    httpclient = pytest.importorskip("tritonclient.http")
    x, y = digits
    client = httpclient.InferenceServerClient(url=gateway.http.removeprefix("http://"))
    headers = gateway.headers("alpha")
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_model_metadata(MODEL, headers=headers)["name"] == MODEL
    tensor = httpclient.InferInput("input", [8, 64], "FP32")
    tensor.set_data_from_numpy(x[:8])
    result = client.infer(MODEL, [tensor], headers=headers)
    assert np.mean(result.as_numpy("logits").argmax(1) == y[:8]) >= 0.75
    client.close()


def test_sigterm_stops_every_listener_with_exit_code_0(tmp_path):
    from edgeserve.processes import gateway_process

    process = gateway_process(tmp_path, tmp_path / "state")
    process.start()
    assert httpx.get(f"http://127.0.0.1:{process.ports['http']}/v2/health/live").status_code == 200
    assert process.stop() == 0
