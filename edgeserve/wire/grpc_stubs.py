"""Typed doors to the generated gRPC code, which protoc emits without annotations.

Kept apart from ``oip_grpc`` (messages only) so that converting tensors never imports
grpc itself; the untyped calls are excused here, once, instead of at every caller.
"""

from __future__ import annotations

from typing import Any

from edgeserve.wire.proto import grpc_service_pb2_grpc as pb_grpc


def inference_stub(channel: Any) -> Any:
    """A ``GRPCInferenceService`` client stub on ``channel`` (sync or ``grpc.aio``)."""
    return pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]


def add_inference_servicer(servicer: Any, server: Any) -> None:
    """Register ``servicer`` as the ``GRPCInferenceService`` of ``server``."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
