"""Typed doors to the generated gRPC code, which protoc emits without annotations.

Kept apart from ``oip_grpc`` (messages only) so that converting tensors never imports
grpc itself; the untyped calls are excused here, once, instead of at every caller.
"""

from __future__ import annotations

from typing import Any

import grpc

from edgeserve.wire.proto import grpc_service_pb2 as pb
from edgeserve.wire.proto import grpc_service_pb2_grpc as pb_grpc

SERVICE = "inference.GRPCInferenceService"


def inference_stub(channel: Any) -> Any:
    """A ``GRPCInferenceService`` client stub on ``channel`` (sync or ``grpc.aio``)."""
    return pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]


def add_inference_servicer(servicer: Any, server: Any) -> None:
    """Register ``servicer`` as the ``GRPCInferenceService`` of ``server``; each of its
    methods gets the request as the raw bytes that arrived, and parses them itself
    (``oip_grpc.parse_message``).

    grpcio parses a request before the method runs, and bytes that do not parse end
    there: UNKNOWN to the client and an ERROR traceback in the log, outside any handler
    that could count the refusal. With no deserializer the handler sees them instead.
    """
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=None,
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
