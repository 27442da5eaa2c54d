"""The KServe Python SDK's OIP v2 clients (REST and gRPC) work against the gateway unchanged."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("kserve") is None, reason="kserve not installed"),
]
PROBE = Path(__file__).with_name("kserve_probe.py")


def test_kserve_rest_and_grpc_clients_infer_against_the_gateway(start_gateway, digits):
    gateway = start_gateway()
    x, y = digits
    batch = io.BytesIO()
    np.save(batch, x[:8])
    result = subprocess.run(
        [
            sys.executable,
            str(PROBE),
            gateway.http,
            gateway.grpc,
            gateway.keys["app"],
            "digits-cloud",
        ],
        input=batch.getvalue(),
        capture_output=True,
        check=True,
        timeout=120,
    )
    answers = json.loads(result.stdout)
    assert answers["live"] is True
    for protocol in ("rest", "grpc"):
        assert np.mean(np.array(answers[protocol]) == y[:8]) >= 0.75, protocol
