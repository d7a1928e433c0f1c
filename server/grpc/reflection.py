"""gRPC server reflection under both names clients ask for: grpc.reflection.v1 (current
grpcurl, Postman, grpcui try it first) and grpc.reflection.v1alpha.

grpcio-reflection 1.81 ships only v1alpha. The two services are the same messages in two
packages, so the same servicer answers both: v1 calls are parsed and answered with the
v1alpha message classes (identical bytes on the wire).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)


def enable_reflection(service_names: Sequence[str], server: grpc.Server) -> None:
    """Serve reflection v1 and v1alpha listing service_names (both reflection names added)."""
    listed = (*service_names, *SERVICE_NAMES)
    servicer = reflection.ReflectionServicer(listed)
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": method})
            for name in SERVICE_NAMES
        ]
    )
