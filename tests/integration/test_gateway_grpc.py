"""The gateway over gRPC: stock tritonclient with API keys, and devices over mTLS."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from cloud_gateway.tenancy import TenantStore
from edgeserve.security.pki import ensure_dev_pki
from edgeserve.wire import oip_grpc
from edgeserve.wire.proto import grpc_service_pb2 as pb
from edgeserve.wire.proto import grpc_service_pb2_grpc as pb_grpc
from edgeserve.wire.tensors import InferRequest, InferTensor

grpcclient = pytest.importorskip("tritonclient.grpc")
pytestmark = pytest.mark.integration
MODEL = "digits-cloud"


@pytest.fixture
def gateway(start_gateway):
    return start_gateway(
        tenants={
            "app": {"rate_per_s": 1000, "burst": 1000},
            "fleet": {"kind": "device", "allowed_models": [MODEL]},
        }
    )


def _triton(gateway):
    return grpcclient.InferenceServerClient(url=gateway.grpc)


def _auth(gateway, tenant="app"):
    return {"authorization": f"Bearer {gateway.keys[tenant]}"}


def test_tritonclient_grpc_health_metadata_and_infer(gateway, digits):
    x, y = digits
    client = _triton(gateway)
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_model_metadata(MODEL, headers=_auth(gateway), as_json=True)
    assert metadata["inputs"][0]["datatype"] == "FP32"
    tensor = grpcclient.InferInput("input", [16, 64], "FP32")
    tensor.set_data_from_numpy(x[:16])
    result = client.infer(MODEL, [tensor], headers=_auth(gateway))
    assert np.mean(result.as_numpy("logits").argmax(1) == y[:16]) >= 0.8


def test_grpc_without_key_is_unauthenticated(gateway, digits):
    from tritonclient.utils import InferenceServerException

    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(digits[0][:1])
    with pytest.raises(InferenceServerException, match=r"UNAUTHENTICATED|api key"):
        _triton(gateway).infer(MODEL, [tensor])


def test_grpc_bad_input_is_invalid_argument(gateway):
    from tritonclient.utils import InferenceServerException

    tensor = grpcclient.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.full((1, 64), np.inf, np.float32))
    with pytest.raises(InferenceServerException, match="NaN or infinity"):
        _triton(gateway).infer(MODEL, [tensor], headers=_auth(gateway))


def _mtls_stub(gateway, cert: bytes | None, key: bytes | None, ca: bytes):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    channel = grpc.secure_channel(f"localhost:{gateway.process.ports['grpc_mtls']}", credentials)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def _infer_proto(digits):
    request = InferRequest(MODEL, [InferTensor.from_numpy("input", digits[0][:1])])
    return oip_grpc.request_to_proto(request)


def test_registered_device_infers_over_mtls(gateway, digits):
    store = TenantStore(gateway.state_dir / "tenants.db")
    store.register_device("device-7", "fleet")
    store.close()
    pki = ensure_dev_pki(gateway.state_dir / "pki", devices=["device-7"])
    cert, key = pki.devices["device-7"]
    channel, stub = _mtls_stub(
        gateway, cert.read_bytes(), key.read_bytes(), pki.ca.cert.read_bytes()
    )
    with channel:
        reply = stub.ModelInfer(_infer_proto(digits), timeout=10)
    assert oip_grpc.response_from_proto(reply).parameters["tier"] == "cloud"


def test_unregistered_device_certificate_is_refused(gateway, digits):
    pki = ensure_dev_pki(gateway.state_dir / "pki", devices=["stranger"])
    cert, key = pki.devices["stranger"]
    channel, stub = _mtls_stub(
        gateway, cert.read_bytes(), key.read_bytes(), pki.ca.cert.read_bytes()
    )
    with channel, pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(_infer_proto(digits), timeout=10)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_mtls_port_refuses_a_client_without_certificate(gateway, digits):
    pki = ensure_dev_pki(gateway.state_dir / "pki", devices=[])
    channel, stub = _mtls_stub(gateway, None, None, pki.ca.cert.read_bytes())
    with channel, pytest.raises(grpc.RpcError) as error:
        stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_operator_tls_files_replace_the_dev_pki_on_the_device_port(tmp_path, start_gateway, digits):
    # An operator's own CA and a server certificate for the gateway's real name.
    own = ensure_dev_pki(tmp_path / "own-pki", devices=["device-9"], hostnames=["gw.example"])
    gateway = start_gateway(
        tenants={"fleet": {"kind": "device", "allowed_models": [MODEL]}},
        tls_cert=str(own.server.cert),
        tls_key=str(own.server.key),
        client_ca=str(own.ca.cert),
    )
    store = TenantStore(gateway.state_dir / "tenants.db")
    store.register_device("device-9", "fleet")
    store.close()
    cert, key = own.devices["device-9"]
    credentials = grpc.ssl_channel_credentials(
        own.ca.cert.read_bytes(), key.read_bytes(), cert.read_bytes()
    )
    options = [("grpc.ssl_target_name_override", "gw.example")]
    target = f"127.0.0.1:{gateway.process.ports['grpc_mtls']}"
    with grpc.secure_channel(target, credentials, options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(_infer_proto(digits), timeout=10)
    assert oip_grpc.response_from_proto(reply).parameters["tier"] == "cloud"
    assert not (gateway.state_dir / "pki").exists()  # no dev PKI beside the operator's files


def test_device_port_can_be_switched_off_from_the_environment():
    from cloud_gateway.config import GatewayConfig

    assert GatewayConfig(grpc_mtls_port="off").grpc_mtls_port is None


def test_tls_files_are_all_or_none():
    from pydantic import ValidationError

    from cloud_gateway.config import GatewayConfig

    with pytest.raises(ValidationError, match="go together"):
        GatewayConfig(tls_cert="server.pem")
