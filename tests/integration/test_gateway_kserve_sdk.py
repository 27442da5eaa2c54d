"""The KServe Python SDK's OIP v2 clients (REST and gRPC) work against the gateway unchanged."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

kserve = pytest.importorskip("kserve")
pytestmark = pytest.mark.integration
MODEL = "digits-cloud"


def _request(x: np.ndarray):
    tensor = kserve.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    return kserve.InferRequest(model_name=MODEL, infer_inputs=[tensor])


def test_kserve_rest_client_checks_health_and_infers(start_gateway, digits):
    gateway = start_gateway()
    x, y = digits

    async def run():
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2"))
        try:
            live = await client.is_server_live(gateway.http)
            response = await client.infer(gateway.http, _request(x[:8]), model_name=MODEL,
                                          headers=gateway.headers("app"))
        finally:
            await client.close()
        return live, response.outputs[0].as_numpy()

    live, logits = asyncio.run(run())
    assert live
    assert np.mean(logits.reshape(8, 10).argmax(1) == y[:8]) >= 0.75


def test_kserve_grpc_client_infers_with_an_api_key(start_gateway, digits):
    gateway = start_gateway()
    x, y = digits

    async def run():
        client = kserve.InferenceGRPCClient(gateway.grpc)
        try:
            response = await client.infer(
                _request(x[:8]), headers=[("authorization", f"Bearer {gateway.keys['app']}")]
            )
        finally:
            await client.close()
        return response.outputs[0].as_numpy()

    logits = asyncio.run(run())
    assert np.mean(logits.reshape(8, 10).argmax(1) == y[:8]) >= 0.75
