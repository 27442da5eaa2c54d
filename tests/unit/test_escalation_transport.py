"""GrpcCloudTransport against an in-process grpc.aio server: status mapping, metadata, timeouts."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from edge_agent.escalation import GrpcCloudTransport, InMemoryCloudTransport
from edgeserve.wire import oip_grpc
from edgeserve.wire.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from edgeserve.wire.proto import grpc_service_pb2_grpc as pb_grpc
from edgeserve.wire.tensors import InferRequest, InferResponse, InferTensor


def request() -> InferRequest:
    return InferRequest("digits-cloud", [InferTensor.from_numpy("input", np.ones((1, 4), "f4"))])


class Cloud(pb_grpc.GRPCInferenceServiceServicer):
    """Answers by echoing the input as "logits", or fails as told."""

    def __init__(self) -> None:
        self.fail: tuple[grpc.StatusCode, tuple[tuple[str, str], ...]] | None = None
        self.stall = False
        self.seen_metadata: dict[str, str] = {}
        self.seen_time_remaining: float | None = None

    async def ModelInfer(self, message, context):  # noqa: N802 - the protocol's name
        self.seen_metadata = dict(context.invocation_metadata() or ())
        self.seen_time_remaining = context.time_remaining()
        if self.stall:
            await asyncio.sleep(3600)
        if self.fail is not None:
            code, trailers = self.fail
            context.set_trailing_metadata(trailers)
            await context.abort(code, f"told to fail with {code.name}")
        infer = oip_grpc.request_from_proto(message)
        tensor = InferTensor.from_numpy("logits", infer.inputs[0].data)
        return oip_grpc.response_to_proto(InferResponse(infer.model_name, "1", [tensor]))


async def with_cloud(scenario, api_key: str | None = None):
    cloud = Cloud()
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(cloud, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    transport = GrpcCloudTransport(f"127.0.0.1:{port}", tls=None, api_key=api_key)
    try:
        return await scenario(cloud, transport)
    finally:
        await transport.close()
        await server.stop(grace=None)


def test_an_answer_comes_back_as_an_infer_response_with_the_key_and_deadline_sent():
    async def scenario(cloud, transport):
        response = await transport.infer(request(), timeout_s=2.0)
        return cloud, response

    cloud, response = asyncio.run(with_cloud(scenario, api_key="k-123"))
    assert response.output("logits").data.tolist() == [[1.0] * 4]
    assert cloud.seen_metadata["authorization"] == "Bearer k-123"
    assert 0 < cloud.seen_time_remaining <= 2.0


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput),
        (grpc.StatusCode.NOT_FOUND, ModelNotFound),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.UNIMPLEMENTED, InternalError),
    ],
)
def test_grpc_statuses_become_our_exceptions_with_the_cause_kept(code, error_type):
    async def scenario(cloud, transport):
        cloud.fail = (code, ())
        with pytest.raises(error_type) as caught:
            await transport.infer(request(), timeout_s=2.0)
        return caught.value

    error = asyncio.run(with_cloud(scenario))
    assert type(error) is error_type
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)
    assert code.name in error.message


@pytest.mark.parametrize(("trailers", "retry_after_s"), [((("retry-after", "7"),), 7.0), ((), 1.0)])
def test_resource_exhausted_is_rate_limited_with_the_servers_retry_after(trailers, retry_after_s):
    async def scenario(cloud, transport):
        cloud.fail = (grpc.StatusCode.RESOURCE_EXHAUSTED, trailers)
        with pytest.raises(RateLimited) as caught:
            await transport.infer(request(), timeout_s=2.0)
        return caught.value

    assert asyncio.run(with_cloud(scenario)).retry_after_s == retry_after_s


def test_a_stalled_server_hits_the_grpc_deadline():
    async def scenario(cloud, transport):
        cloud.stall = True
        with pytest.raises(DeadlineExceeded):
            await transport.infer(request(), timeout_s=0.1)

    asyncio.run(with_cloud(scenario))


def test_nobody_listening_is_unavailable():
    async def scenario():
        transport = GrpcCloudTransport("127.0.0.1:1", tls=None, api_key=None)
        try:
            with pytest.raises(Unavailable):
                await transport.infer(request(), timeout_s=2.0)
        finally:
            await transport.close()

    asyncio.run(scenario())


def test_a_closed_transport_refuses_calls():
    async def scenario():
        transport = GrpcCloudTransport("127.0.0.1:1", tls=None, api_key=None)
        await transport.close()
        with pytest.raises(InternalError, match="closed"):
            await transport.infer(request(), timeout_s=1.0)
        memory = InMemoryCloudTransport(lambda req: asyncio.sleep(0))
        await memory.close()
        with pytest.raises(InternalError, match="closed"):
            await memory.infer(request(), timeout_s=1.0)

    asyncio.run(scenario())
