"""The contract's hygiene over gRPC against a twin on 127.0.0.1: pagination of ListModels, structured error
details (``google.rpc.BadRequest`` field violations) on INVALID_ARGUMENT, and ``google.protobuf.Timestamp``
beside every deprecated time field, equal to it."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from alutwin.v1 import twin_pb2, twin_pb2_grpc
from twin.historian.codec import quarantined_to_pb
from twin.historian.historian import Quarantined, QuarantineReason


@pytest.fixture
def registry(serving: tuple[Any, Any]) -> Any:
    """A raw ModelRegistry stub on the ``serving`` twin (the client's calls hide the wire fields)."""
    _, client = serving
    channel = grpc.insecure_channel(client.address)
    yield twin_pb2_grpc.ModelRegistryStub(channel)
    channel.close()


def _violations(err: grpc.RpcError) -> list[tuple[str, str]]:
    """The ``(field, description)`` pairs of the BadRequest detail of a failed call's status."""
    status = rpc_status.from_call(err)
    assert status is not None, "INVALID_ARGUMENT without a google.rpc.Status in grpc-status-details-bin"
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    out = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        assert detail.Unpack(bad), f"unexpected detail {detail.type_url}"
        out += [(v.field, v.description) for v in bad.field_violations]
    return out


def test_list_models_pages_through_every_model_once_in_order_of_name(
    serving: tuple[Any, Any], twin_models: dict[str, Any], registry: Any
) -> None:
    _, client = serving
    for name in ("b-cell", "a-cell"):
        client.register(name, twin_models["v2"][0])
    first = registry.ListModels(twin_pb2.ListModelsRequest(page_size=2))
    assert [m.name for m in first.models] == ["a-cell", "b-cell"] and first.next_page_token
    second = registry.ListModels(twin_pb2.ListModelsRequest(page_size=2, page_token=first.next_page_token))
    assert [m.name for m in second.models] == ["cell"] and second.next_page_token == ""
    everything = registry.ListModels(twin_pb2.ListModelsRequest())  # page_size 0: one page
    assert [m.name for m in everything.models] == ["a-cell", "b-cell", "cell"] and everything.next_page_token == ""
    # a model added between two pages is listed once, on the page its name falls on
    client.register("c-cell", twin_models["v2"][0])
    second = registry.ListModels(twin_pb2.ListModelsRequest(page_size=2, page_token=first.next_page_token))
    assert [m.name for m in second.models] == ["c-cell", "cell"]
    # the client fetches every page, whatever their size
    for size in (1, 2, 0):
        models, revision = client.list_models(page_size=size)
        assert [m.name for m in models] == ["a-cell", "b-cell", "c-cell", "cell"] and revision > 0


@pytest.mark.parametrize("token", ["not-a-token", "e30", "eyJraW5kIjoib3RoZXIiLCJhZnRlciI6ImEifQ"])
def test_a_bad_page_token_is_invalid_argument_naming_the_field(registry: Any, token: str) -> None:
    # "e30" is base64 of "{}"; the last is {"kind": "other", "after": "a"}: well-formed JSON, not our token
    with pytest.raises(grpc.RpcError) as caught:
        registry.ListModels(twin_pb2.ListModelsRequest(page_size=1, page_token=token))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = _violations(caught.value)
    assert field == "page_token" and "next_page_token" in description


def test_a_bad_predict_request_names_the_offending_field(serving: tuple[Any, Any]) -> None:
    _, client = serving
    x0, u = np.zeros((2, 7)), np.zeros((2, 5, 5))
    with pytest.raises(grpc.RpcError) as caught:
        client.predict("cell", x0, u)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = _violations(caught.value)
    assert field == "x0" and description == caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        client.predict("cell", np.full((2, 8), 900.0), np.full((2, 5, 5), np.nan))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in _violations(caught.value)] == ["u[0, 0, 0]"]  # the path of the first bad value


def test_nested_fields_and_errors_without_a_field_still_carry_the_status_detail(registry: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        registry.GetModel(twin_pb2.GetModelRequest())
    assert _violations(caught.value) == [("model.name", "model.name is empty")]
    with pytest.raises(grpc.RpcError) as caught:
        registry.GetModel(twin_pb2.GetModelRequest(model=twin_pb2.ModelRef(name="cell", alias="Bad Alias!")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = _violations(caught.value)
    assert field == "" and description == caught.value.details()  # "alias" is no field of the request itself


def _iso_of(ts: Any) -> dt.datetime:
    return ts.ToDatetime(tzinfo=dt.timezone.utc)


def test_every_time_has_a_timestamp_equal_to_its_deprecated_twin(serving: tuple[Any, Any], registry: Any) -> None:
    _, client = serving
    before = dt.datetime.now(dt.timezone.utc)
    info = registry.GetModel(twin_pb2.GetModelRequest(model=twin_pb2.ModelRef(name="cell")))
    assert info.HasField("registered_at") and info.HasField("created_at")
    assert _iso_of(info.registered_at) == dt.datetime.fromisoformat(info.registered)
    assert _iso_of(info.created_at) == dt.datetime.fromisoformat(info.created)
    assert _iso_of(info.registered_at) <= before
    listing = registry.ListModels(twin_pb2.ListModelsRequest())
    [version] = listing.models[0].versions
    assert version.registered_at == info.registered_at
    assert _iso_of(version.registered_at) == dt.datetime.fromisoformat(version.registered)
    # the client reads the Timestamp
    assert client.get_model("cell").registered == info.registered
    # a Watch event's time is its time_unix_ms
    stream = registry.Watch(twin_pb2.WatchRequest(name="cell"))
    try:
        snapshot = next(stream)
        assert snapshot.time.ToMilliseconds() == snapshot.time_unix_ms
        t0 = time.time() * 1000
        client.set_alias("cell", "staging", 1)
        event = next(stream)
        assert event.HasField("time") and event.time.ToMilliseconds() == event.time_unix_ms
        assert abs(event.time_unix_ms - t0) < 60_000
    finally:
        stream.cancel()


def test_a_quarantined_sample_carries_its_receipt_time_as_a_timestamp() -> None:
    received = 1_765_000_000.123456
    q = Quarantined(
        cell=1, step=2, time_s=20.0, x=np.zeros(8), u=np.zeros(5), reason=QuarantineReason.NON_FINITE, detail="x",
        received_at=received,
    )  # fmt: skip
    msg = quarantined_to_pb(q)
    assert msg.received_at_unix_s == received
    assert abs(msg.received_at.ToNanoseconds() / 1e9 - received) < 1e-6
