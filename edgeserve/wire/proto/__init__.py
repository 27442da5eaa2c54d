"""Generated protobuf/gRPC stubs of the OIP v2 service (see grpc_service.proto).

Do not edit the ``grpc_service_pb2*`` files by hand: run ``generate.sh``. Code outside
``edgeserve.wire`` should go through ``edgeserve.wire.oip_grpc`` rather than build these
messages itself.
"""
