"""The gateway's gRPC door parses requests itself: bytes that are not protobuf are an
INVALID_ARGUMENT, counted and logged (throttled) like any refusal, not grpcio's UNKNOWN."""

import asyncio
import logging

import grpc
import numpy as np
import pytest

from cloud_gateway.grpc_server import create_grpc_server
from cloud_gateway.metrics import GatewayMetrics
from edgeserve.wire import oip_grpc
from edgeserve.wire.errors import InvalidInput, ModelNotFound
from edgeserve.wire.proto import grpc_service_pb2 as pb
from edgeserve.wire.tensors import InferRequest, InferTensor

SERVICE = "/inference.GRPCInferenceService/"
GARBAGE = b"\xff\xff\xff\xff"


class _Core:
    """The part of GatewayCore the servicer touches; every model is unknown."""

    def __init__(self) -> None:
        self.metrics = GatewayMetrics()
        self.ready = True

    async def authenticate(self, credentials: object) -> None:
        return None

    async def admit(self, principal: object, model: str, started: float) -> None:
        raise ModelNotFound(f"unknown model '{model}'")


def _calls(core: _Core, calls: list[tuple[str, bytes]]) -> list[tuple[grpc.StatusCode, str]]:
    """Each (method, raw request) sent to a real server on a free port: (code, details)."""

    async def scenario() -> list[tuple[grpc.StatusCode, str]]:
        server, port = create_grpc_server(core, "127.0.0.1", 0)
        await server.start()
        answers = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                for method, raw in calls:
                    try:
                        await channel.unary_unary(SERVICE + method)(raw, timeout=10)
                        answers.append((grpc.StatusCode.OK, ""))
                    except grpc.aio.AioRpcError as error:
                        answers.append((error.code(), error.details() or ""))
        finally:
            await server.stop(None)
        return answers

    return asyncio.run(scenario())


def _invalid(core: _Core) -> float:
    labels = {"code": "invalid_input", "protocol": "grpc"}
    return core.metrics.registry.get_sample_value("edgeserve_gateway_errors_total", labels) or 0


def test_parse_message_refuses_bytes_that_are_not_the_message():
    with pytest.raises(InvalidInput, match=r"not a valid inference\.ModelInferRequest message"):
        oip_grpc.parse_message(pb.ModelInferRequest, GARBAGE)


def test_parse_message_reads_a_valid_message():
    raw = pb.ModelReadyRequest(name="m").SerializeToString()
    assert oip_grpc.parse_message(pb.ModelReadyRequest, raw).name == "m"


def test_garbage_is_invalid_argument_counted_and_logged_once(caplog):
    core = _Core()
    with caplog.at_level(logging.WARNING):
        answers = _calls(core, [("ModelInfer", GARBAGE)] * 3 + [("ServerLive", GARBAGE)])
    assert {code for code, _ in answers} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert "not a valid inference.ModelInferRequest" in answers[0][1]
    assert _invalid(core) == 4
    refused = [r for r in caplog.records if r.getMessage() == "rpc refused"]
    assert [r.rpc for r in refused] == ["ModelInfer", "ServerLive"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_valid_request_still_parses_and_answers():
    raw = pb.ServerLiveRequest().SerializeToString()
    assert _calls(_Core(), [("ServerLive", raw)]) == [(grpc.StatusCode.OK, "")]


def test_a_huge_model_name_is_not_found_rather_than_resource_exhausted():
    request = InferRequest("m" * 100_000, [InferTensor.from_numpy("input", np.zeros((1, 4)))])
    raw = oip_grpc.request_to_proto(request).SerializeToString()
    [(code, details)] = _calls(_Core(), [("ModelInfer", raw)])
    assert code == grpc.StatusCode.NOT_FOUND
    assert details.startswith("unknown model 'mmm") and len(details) < 1100
