"""Predictions of the twin in-process on 127.0.0.1, port 0: against the in-process rollout, both precisions, the
Predict wire codec, every refused request's status code and message, the limits of a server, the concurrency
limit and deadlines, and an unexpected error."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from alutwin.codec import encode_array, parse_predict_request, serialize_predict_request, split_predict_response
from alutwin.v1 import twin_pb2, twin_pb2_grpc
from plant import sample_initial_states
from plant.physics import algebraic
from plant.potline import OUTPUT_NAMES
from twin import serving as twin_serving
from twin.serving import prediction

WAIT = 10.0
NOMINAL_U = np.array([0.024, 140_000.0, 0.0, 0.0, 0.05])
# The server's summary (mean, spread) and the tests' numpy reductions of the same member trajectories are two
# implementations (the C kernel's summary for three cells or more, numpy's mean/std here): equal to rounding.
SUMMARY_RTOL = 1e-12
SUMMARY_ATOL = 1e-9  # spreads near zero: a last-bit difference of the mean (states up to ~1e4) shows absolutely


def test_predictions_equal_the_in_processrollout(serving, twin_models, scenarios, rollout):
    _, client = serving
    model = twin_models["v1"][1]
    x0, u = scenarios(b=3, h=15)
    p = client.predict("cell", x0, u, include_members=True, outputs=["superheat", "alumina_pct", "power"])
    ref = rollout(model, x0, u)  # (M, B, H + 1, 8)
    assert p.model.name == "cell" and p.model.version == 1 and p.model.alias == "champion"
    assert p.n_members == 3 and p.dt == 10.0
    np.testing.assert_array_equal(p.members, ref)  # the same engine's code in the server and here: bit for bit
    np.testing.assert_allclose(p.members, model.simulate(x0, u), rtol=1e-9, atol=0)  # the numpy reference
    np.testing.assert_allclose(p.mean, ref.mean(axis=0), rtol=SUMMARY_RTOL, atol=0)
    np.testing.assert_allclose(p.spread, ref.std(axis=0), rtol=SUMMARY_RTOL, atol=SUMMARY_ATOL)
    u_ext = np.concatenate([u, u[:, -1:]], axis=1)
    alg = algebraic(ref.mean(axis=0), u_ext)
    # The outputs come from the kernel's translation of the same formulas: equal to rounding (see
    # tests/identification/test_fast_rollout.py, OUTPUTS_RTOL).
    np.testing.assert_allclose(p.outputs["superheat"], alg.superheat, rtol=1e-12, atol=0)
    np.testing.assert_allclose(p.outputs["alumina_pct"], 100.0 * alg.c_alumina, rtol=1e-12, atol=0)
    np.testing.assert_allclose(p.outputs["power"], alg.power, rtol=1e-12, atol=0)
    assert list(p.outputs) == ["superheat", "alumina_pct", "power"]


def test_default_outputs_no_members_and_packed_encoding(serving, scenarios):
    server, client = serving
    x0, u = scenarios(b=2, h=5)
    raw = client.predict("cell", x0, u)
    assert raw.members is None and list(raw.outputs) == ["superheat", "alumina_pct", "alf3_pct", "cell_voltage"]
    req = client.predict_request("cell", x0, u)
    req.encoding = twin_pb2.ARRAY_ENCODING_PACKED
    req.x0.CopyFrom(encode_array(x0, twin_pb2.ARRAY_ENCODING_PACKED))  # packed request arrays work too
    with grpc.insecure_channel(server.address) as channel:
        r = twin_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=WAIT)
    assert len(r.mean.values) == 2 * 6 * 8 and not r.mean.raw and list(r.mean.shape) == [2, 6, 8]
    # The same server, the same inputs, the same code: only the encoding of the response differs.
    np.testing.assert_array_equal(np.array(r.mean.values).reshape(2, 6, 8), raw.mean)
    np.testing.assert_array_equal(np.array(r.outputs.values).reshape(2, 6, 4), np.stack(list(raw.outputs.values()), -1))


def test_float32_precision_halves_the_bytes_and_predicts_from_the_rounded_inputs(
    serving, twin_models, scenarios, rollout
):
    _, client = serving
    x0, u = scenarios(b=4, h=9)
    compact = client.predict("cell", x0, u, precision="float32", include_members=True)
    # The server predicts, in float64, from exactly the float32 values sent ...
    x0_32, u_32 = x0.astype(np.float32).astype(np.float64), u.astype(np.float32).astype(np.float64)
    ref = rollout(twin_models["v1"][1], x0_32, u_32)  # (M, B, H + 1, 8)
    assert compact.mean.dtype == np.float64
    # ... and sends the results rounded to float32: the members bit for bit (the same engine's code), the mean
    # (the kernel's summary against numpy's mean, equal to rounding) within one float32 step (2**-23 relative).
    np.testing.assert_array_equal(compact.members, ref.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(compact.mean, compact.mean.astype(np.float32))
    np.testing.assert_allclose(compact.mean, ref.mean(axis=0).astype(np.float32), rtol=2.0**-23, atol=0)
    exact = client.predict("cell", x0, u)
    np.testing.assert_allclose(compact.mean, exact.mean, rtol=1e-5, atol=0)  # what the rounding costs
    # Half the bytes on the wire, both ways.
    req64 = client.predict_request("cell", x0, u).SerializeToString()
    req32 = client.predict_request("cell", x0, u, precision="float32").SerializeToString()
    assert len(req32) < 0.55 * len(req64)
    with pytest.raises(ValueError, match="precision"):
        client.predict("cell", x0, u, precision="float16")


def test_predict_request_codec_round_trips_and_refuses_garbage(scenarios):
    x0, u = scenarios(b=2, h=3)
    header = twin_pb2.PredictRequest(outputs=["power"], include_members=True)
    for encoding, item in ((twin_pb2.ARRAY_ENCODING_RAW, 8), (twin_pb2.ARRAY_ENCODING_RAW_F32, 4)):
        data = serialize_predict_request(header, x0, u, encoding)
        full = twin_pb2.PredictRequest.FromString(data)  # ordinary protobuf bytes
        assert len(full.x0.raw or full.x0.raw_f32) == item * x0.size
        got_header, got_x0, got_u = parse_predict_request(data)
        assert list(got_header.outputs) == ["power"] and got_header.include_members
        np.testing.assert_array_equal(got_u, u.astype(np.float32) if item == 4 else u)
        assert got_x0.shape == (2, 8)
    with pytest.raises(ValueError, match="axes"):
        parse_predict_request(header.SerializeToString())  # no arrays at all
    with pytest.raises(ValueError, match=r"u\.raw_f32 holds"):
        bad = twin_pb2.PredictRequest(x0=encode_array(x0), u=twin_pb2.DoubleArray(shape=[2, 3, 5], raw_f32=b"\0" * 8))
        parse_predict_request(bad.SerializeToString())


def _with_unknown_field(array: np.ndarray) -> twin_pb2.DoubleArray:
    """A DoubleArray of ``array`` that also carries a field 15 = 1 this contract does not define: legal protobuf
    (a newer sender's field), which the codec's fast path leaves to protobuf."""
    return twin_pb2.DoubleArray.FromString(encode_array(array).SerializeToString() + bytes([15 << 3, 1]))


def test_predict_bytes_the_fast_path_leaves_to_protobuf_decode_the_same(scenarios):
    x0, u = scenarios(b=2, h=3)
    req = twin_pb2.PredictRequest(outputs=["power"], x0=_with_unknown_field(x0), u=encode_array(u))
    header, got_x0, got_u = parse_predict_request(req.SerializeToString())
    assert list(header.outputs) == ["power"] and not header.HasField("x0") and not header.HasField("u")
    np.testing.assert_array_equal(got_x0, x0)
    np.testing.assert_array_equal(got_u, u)
    with pytest.raises(ValueError, match=r"^u\.shape must have 3 axes, got \[\]$"):  # u absent
        parse_predict_request(twin_pb2.PredictRequest(x0=_with_unknown_field(x0)).SerializeToString())
    mean, spread = np.arange(2 * 4 * 8.0).reshape(2, 4, 8), np.full((2, 4, 8), 0.5)
    resp = twin_pb2.PredictResponse(n_members=3, mean=encode_array(mean), spread=_with_unknown_field(spread))
    header, arrays = split_predict_response(resp.SerializeToString())
    assert header.n_members == 3 and not header.HasField("mean") and not header.HasField("spread")
    assert sorted(arrays) == ["mean", "spread"]  # absent outputs and members stay absent
    np.testing.assert_array_equal(arrays["mean"], mean)
    np.testing.assert_array_equal(arrays["spread"], spread)


def test_every_output_of_the_plant_can_be_asked_for():
    assert list(twin_serving.OUTPUT_FUNCTIONS) == list(OUTPUT_NAMES)
    assert set(twin_serving.DEFAULT_OUTPUTS) <= set(OUTPUT_NAMES)


def test_serving_info_states_the_limits(twin_server):
    server, client = twin_server(max_batch=7, max_horizon=99, max_work=1234, keep_previous=2, cache_size=5)
    assert (server.registry.keep_previous, server.registry.cache_size) == (2, 5)
    info = client.serving_info()
    assert (info.max_batch, info.max_horizon, info.max_work, info.default_alias) == (7, 99, 1234, "champion")
    assert info.states[5] == ("T_bath", "degC") and info.inputs[1] == ("current", "A")
    assert ("cell_voltage", "V") in info.outputs and info.default_outputs[0] == "superheat"
    assert info.max_concurrent_predictions == 8 and info.max_upload_bytes == 16 << 20


def _raw(a: np.ndarray, shape=None) -> twin_pb2.DoubleArray:
    msg = encode_array(a)
    if shape is not None:
        del msg.shape[:]
        msg.shape.extend(shape)
    return msg


X0 = sample_initial_states(np.random.default_rng(0), 2)  # (2, 8)
U = np.broadcast_to(NOMINAL_U, (2, 4, 5)).copy()  # (2, 4, 5)
_NAN_X0 = X0.copy()
_NAN_X0[1, 5] = np.nan
_INF_U = U.copy()
_INF_U[0, 2, 1] = np.inf


def _req(**fields) -> twin_pb2.PredictRequest:
    base = {"model": twin_pb2.ModelRef(name="cell"), "x0": _raw(X0), "u": _raw(U)}
    return twin_pb2.PredictRequest(**{**base, **fields})


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (_req(x0=_raw(X0[:, :7])), "INVALID_ARGUMENT", ["x0", "(B, 8)", "[2, 7]"]),
        (_req(u=_raw(U[:1])), "INVALID_ARGUMENT", ["u", "B = 2", "[1, 4, 5]"]),
        (_req(u=_raw(U[0])), "INVALID_ARGUMENT", ["u.shape", "3 axes"]),
        (_req(x0=_raw(X0, shape=[2, 9])), "INVALID_ARGUMENT", ["x0.raw", "bytes", "[2, 9]"]),
        (
            _req(x0=twin_pb2.DoubleArray(shape=[2, 8], values=[1.0] * 16, raw=b"\0" * 128)),
            "INVALID_ARGUMENT",
            ["more than one", "raw"],
        ),
        (_req(x0=_raw(_NAN_X0)), "INVALID_ARGUMENT", ["x0[1, 5] = nan", "finite"]),
        (_req(u=_raw(_INF_U)), "INVALID_ARGUMENT", ["u[0, 2, 1] = inf", "finite"]),
        (_req(u=_raw(np.zeros((2, 0, 5)))), "INVALID_ARGUMENT", ["H = 0", "1 to 50"]),
        (_req(u=_raw(np.ones((2, 51, 5)))), "INVALID_ARGUMENT", ["H = 51", "1 to 50"]),
        (_req(x0=_raw(np.ones((6, 8))), u=_raw(np.ones((6, 4, 5)))), "INVALID_ARGUMENT", ["B = 6", "1 to 5"]),
        (_req(x0=_raw(np.ones((5, 8))), u=_raw(np.ones((5, 50, 5)))), "INVALID_ARGUMENT", ["B * H * M", "600"]),
        (_req(outputs=["superheat", "bogus"]), "INVALID_ARGUMENT", ["bogus", "cell_voltage"]),
        (_req(model=twin_pb2.ModelRef(name="")), "INVALID_ARGUMENT", ["model.name", "empty"]),
        (_req(model=twin_pb2.ModelRef(name="../etc")), "INVALID_ARGUMENT", ["model name", "not valid"]),
        (_req(model=twin_pb2.ModelRef(name="cell", version=0)), "INVALID_ARGUMENT", ["version", ">= 1"]),
        (_req(model=twin_pb2.ModelRef(name="nope")), "NOT_FOUND", ["nope", "cell"]),
        (_req(model=twin_pb2.ModelRef(name="cell", version=9)), "NOT_FOUND", ["version 9", "[1]"]),
        (_req(model=twin_pb2.ModelRef(name="cell", alias="staging")), "NOT_FOUND", ["staging", "champion"]),
    ],
)
def test_bad_predictions_get_the_right_code_and_a_clear_message(
    twin_server, twin_models, request_, code, words, rpc_error
):
    server, client = twin_server(max_batch=5, max_horizon=50, max_work=600)
    client.register("cell", twin_models["v1"][0], set_alias="champion")
    with grpc.insecure_channel(server.address) as channel:
        stub = twin_pb2_grpc.PredictionServiceStub(channel)
        got, details = rpc_error(lambda: stub.Predict(request_, timeout=WAIT))
    assert got == getattr(grpc.StatusCode, code), details
    for w in words:
        assert w in details, details
    assert str(server.runtime.config.store) not in details


def test_responses_beyond_the_message_size_are_refused(twin_server, twin_models, scenarios, rpc_error):
    _, client = twin_server(max_message_bytes=3 << 20, max_upload_bytes=1 << 20)
    client.register("cell", twin_models["v1"][0], set_alias="champion")
    x0, u = scenarios(b=40, h=300)
    client.predict("cell", x0, u)  # 40 * 301 * 20 doubles: fits; with 3 members' trajectories it would not
    code, details = rpc_error(lambda: client.predict("cell", x0, u, include_members=True))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_message_bytes" in details and "member" in details
    x0, u = scenarios(b=200, h=300)  # the request alone is 2.4 MB of u, and its response would not fit
    code, _ = rpc_error(lambda: client.predict("cell", x0, u))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    big = np.ones((1000, 100, 5))  # a 4 MB request: beyond the transport's limit
    code, _ = rpc_error(lambda: client.predict("cell", np.ones((1000, 8)), big))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_concurrency_limit_and_deadline(twin_server, twin_models, monkeypatch, rpc_error):
    _, client = twin_server(max_concurrent_predictions=1)
    client.register("cell", twin_models["v1"][0], set_alias="champion")
    release = threading.Event()
    real = prediction.predict

    def slow(*args, **kwargs):
        release.wait(WAIT)
        return real(*args, **kwargs)

    monkeypatch.setattr(prediction, "predict", slow)
    code, details = rpc_error(lambda: client.predict("cell", X0, U, timeout=0.3))  # takes the one slot, times out
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    code, details = rpc_error(lambda: client.predict("cell", X0, U))  # the slot is held until the work ends
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "(1)" in details
    release.set()
    monkeypatch.setattr(prediction, "predict", real)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            assert client.predict("cell", X0, U).model.version == 1
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            time.sleep(0.01)
    else:
        pytest.fail("the slot was never released")


def test_an_unexpected_error_is_internal_without_details(serving, monkeypatch, rpc_error):
    _, client = serving

    def broken(*args, **kwargs):
        raise RuntimeError("boom in /home/secret/twin/service.py")

    monkeypatch.setattr(prediction, "predict", broken)
    code, details = rpc_error(lambda: client.predict("cell", X0, U))
    assert code == grpc.StatusCode.INTERNAL and "secret" not in details and "boom" not in details
    monkeypatch.undo()
    assert client.predict("cell", X0, U).model.version == 1  # the server goes on
