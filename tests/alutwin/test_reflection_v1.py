"""Server reflection in both versions (:mod:`alutwin.reflection`): a ``grpc.reflection.v1`` client lists the
services and reads their descriptors from the twin and the plant service, the v1alpha client still does, the two
versions' messages are the same field for field, and an unknown symbol gets the v1alpha servicer's NOT_FOUND."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_pb2_grpc

from alutwin import reflection
from alutwin.reflection.v1 import reflection_pb2, reflection_pb2_grpc
from plant.service import SERVICE_NAME as PLANT_SERVICE
from twin.serving import PREDICTION_SERVICE, REGISTRY_SERVICE

WAIT = 10.0
HEALTH = "grpc.health.v1.Health"


def _ask(channel: grpc.Channel, pb2, pb2_grpc, **requests: str) -> list:
    """The answers of one reflection stream to one request per keyword (``list_services=""``, ...), in order."""
    stub = pb2_grpc.ServerReflectionStub(channel)
    asked = [pb2.ServerReflectionRequest(**{field: value}) for field, value in requests.items()]
    return list(stub.ServerReflectionInfo(iter(asked), timeout=WAIT))


def _listed(reply) -> set[str]:
    return {s.name for s in reply.list_services_response.service}


def _files(reply) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    protos = [
        descriptor_pb2.FileDescriptorProto.FromString(b) for b in reply.file_descriptor_response.file_descriptor_proto
    ]
    return {p.name: p for p in protos}


def test_the_v1_messages_are_the_v1alpha_messages_field_for_field():
    def fields(module) -> dict[str, list[tuple]]:
        def field(f) -> tuple:
            oneof = f.containing_oneof.name if f.containing_oneof else ""
            return f.name, f.number, f.type, f.is_repeated, f.message_type.name if f.message_type else "", oneof

        return {name: [field(f) for f in m.fields] for name, m in module.DESCRIPTOR.message_types_by_name.items()}

    assert reflection_pb2.DESCRIPTOR.package == "grpc.reflection.v1"
    assert fields(reflection_pb2) == fields(v1alpha_pb2)
    assert len(fields(reflection_pb2)) == 8
    (method,) = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].methods
    assert method.name == "ServerReflectionInfo" and method.client_streaming and method.server_streaming
    assert reflection.SERVICE_NAMES == (
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    )


def test_a_v1_client_lists_the_twin_and_reads_the_prediction_service(twin_server):
    server, _ = twin_server()
    with grpc.insecure_channel(server.address) as channel:
        listing, found, by_name, itself = _ask(
            channel,
            reflection_pb2,
            reflection_pb2_grpc,
            list_services="",
            file_containing_symbol=PREDICTION_SERVICE,
            file_by_filename="alutwin/v1/common.proto",
            all_extension_numbers_of_type="grpc.reflection.v1.ServerReflectionRequest",
        )
        (alpha_listing,) = _ask(channel, v1alpha_pb2, v1alpha_pb2_grpc, list_services="")
    assert isinstance(listing, reflection_pb2.ServerReflectionResponse)
    assert {PREDICTION_SERVICE, REGISTRY_SERVICE, HEALTH, *reflection.SERVICE_NAMES} <= _listed(listing)
    assert _listed(listing) == _listed(alpha_listing)
    files = _files(found)
    twin_proto = files["alutwin/v1/twin.proto"]
    assert twin_proto.package == "alutwin.v1"
    assert "PredictionService" in [s.name for s in twin_proto.service]
    assert "alutwin/v1/common.proto" in files  # its dependency comes with it
    assert list(_files(by_name)) == ["alutwin/v1/common.proto"]
    assert listing.original_request.list_services == "" and found.original_request.file_containing_symbol
    assert itself.all_extension_numbers_response.base_type_name == "grpc.reflection.v1.ServerReflectionRequest"


def test_v1_describes_itself_and_reports_an_unknown_symbol(twin_server):
    server, _ = twin_server()
    with grpc.insecure_channel(server.address) as channel:
        described, unknown = _ask(
            channel,
            reflection_pb2,
            reflection_pb2_grpc,
            file_containing_symbol=reflection.SERVICE_NAME,
            file_by_filename="no/such/file.proto",
        )
    assert list(_files(described)) == ["alutwin/reflection/v1/reflection.proto"]
    assert unknown.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert unknown.original_request.file_by_filename == "no/such/file.proto"


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_the_plant_service_serves_both_versions(plant_server, version):
    pb2, pb2_grpc = (reflection_pb2, reflection_pb2_grpc) if version == "v1" else (v1alpha_pb2, v1alpha_pb2_grpc)
    server, _ = plant_server()
    with grpc.insecure_channel(server.address) as channel:
        listing, found = _ask(channel, pb2, pb2_grpc, list_services="", file_containing_symbol=PLANT_SERVICE)
    assert {PLANT_SERVICE, HEALTH, *reflection.SERVICE_NAMES} <= _listed(listing)
    assert "alutwin/v1/plant.proto" in _files(found)
