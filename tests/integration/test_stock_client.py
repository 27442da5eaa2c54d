"""A stock OIP v2 client (tritonclient HTTP) uses the agent's local API unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from edgeserve.artifacts import packaged_artifacts
from models.data import load_split

httpclient = pytest.importorskip("tritonclient.http")
pytestmark = pytest.mark.integration


@pytest.fixture
def triton(start_agent):
    agent = start_agent()
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{agent.port}")
    yield client
    client.close()


def test_health_and_metadata_through_tritonclient(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("digits-edge")
    metadata = triton.get_model_metadata("digits-edge")
    assert metadata["inputs"][0]["shape"] == [-1, 64]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_through_tritonclient(triton, binary):
    x, y = load_split(packaged_artifacts(), "test")
    batch = x[:16]
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    output = httpclient.InferRequestedOutput("logits", binary_data=binary)
    result = triton.infer("digits-edge", [tensor], outputs=[output])
    logits = result.as_numpy("logits")
    assert logits.shape == (16, 10)
    assert np.mean(logits.argmax(1) == y[:16]) > 0.8
    assert result.get_response()["parameters"]["tier"] == "edge"


def test_tritonclient_sees_oip_errors(triton):
    from tritonclient.utils import InferenceServerException

    tensor = httpclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.full((1, 64), np.nan, np.float32))
    with pytest.raises(InferenceServerException, match="NaN"):
        triton.infer("digits-edge", [tensor])
