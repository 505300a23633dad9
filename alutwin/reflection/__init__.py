"""gRPC server reflection in both of its versions: ``grpc.reflection.v1`` (the stable one) and
``grpc.reflection.v1alpha`` (the one grpcio-reflection serves).

grpcio-reflection implements only v1alpha. The two versions' messages are the same, field for field, under two
package names, so :class:`ReflectionServicer` serves v1 by handing each request to grpcio-reflection's v1alpha
servicer and each answer back, converted through their wire bytes (``SerializeToString``/``FromString``).
:func:`enable_server_reflection` adds both services to a server and lists both among its services. The v1 messages
are generated from ``proto/alutwin/reflection/v1/reflection.proto`` into :mod:`alutwin.reflection.v1`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection as v1alpha
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_pb2_grpc

from alutwin.reflection.v1 import reflection_pb2, reflection_pb2_grpc

__all__ = ["SERVICE_NAME", "SERVICE_NAMES", "V1ALPHA_SERVICE_NAME", "ReflectionServicer", "enable_server_reflection"]

SERVICE_NAME = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
"""``"grpc.reflection.v1.ServerReflection"``."""
V1ALPHA_SERVICE_NAME = v1alpha.SERVICE_NAME
"""``"grpc.reflection.v1alpha.ServerReflection"``."""
SERVICE_NAMES = (SERVICE_NAME, V1ALPHA_SERVICE_NAME)
"""Both reflection services, as :func:`enable_server_reflection` lists them."""


class ReflectionServicer(reflection_pb2_grpc.ServerReflectionServicer):
    """``grpc.reflection.v1.ServerReflection``, answered by grpcio-reflection's v1alpha servicer.

    Parameters
    ----------
    service_names : sequence of str
        The full names of the services a ``list_services`` request lists.
    pool : DescriptorPool, optional
        Where descriptors are looked up (default: protobuf's default pool).
    """

    def __init__(self, service_names: Sequence[str], pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._v1alpha = v1alpha.ReflectionServicer(service_names, pool=pool)

    def ServerReflectionInfo(
        self, request_iterator: Iterable[reflection_pb2.ServerReflectionRequest], context: grpc.ServicerContext
    ) -> Iterator[reflection_pb2.ServerReflectionResponse]:
        requests = (v1alpha_pb2.ServerReflectionRequest.FromString(r.SerializeToString()) for r in request_iterator)
        for response in self._v1alpha.ServerReflectionInfo(requests, context):
            yield reflection_pb2.ServerReflectionResponse.FromString(response.SerializeToString())


def enable_server_reflection(
    service_names: Iterable[str], server: grpc.Server, pool: descriptor_pool.DescriptorPool | None = None
) -> None:
    """Serve reflection v1 and v1alpha on ``server``, both listing ``service_names`` and the two reflection
    services themselves (grpcio-reflection's ``enable_server_reflection``, for both versions)."""
    names = tuple(dict.fromkeys((*service_names, *SERVICE_NAMES)))
    v1alpha_pb2_grpc.add_ServerReflectionServicer_to_server(v1alpha.ReflectionServicer(names, pool=pool), server)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(ReflectionServicer(names, pool=pool), server)
