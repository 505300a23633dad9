"""The twin service in-process on 127.0.0.1, port 0: predictions against the in-process rollout, every error
path's status code, health, reflection, management auth, hot swap under load, refused uploads, rollback,
pinning, watch, metrics, TLS, and a SIGTERM drain of ``alutwin twin serve`` in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import safetensors.numpy
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from alutwin.codec import encode_array, parse_predict_request, serialize_predict_request
from alutwin.v1 import twin_pb2, twin_pb2_grpc
from identification.data import fit_normalization, make_samples
from identification.estimator import prune
from identification.metrics import path_dependency
from identification.modelfile import MANIFEST_NAME, WEIGHTS_NAME, save_model
from identification.network import Architecture, EnsembleWeights
from identification.rollout import make_rollout_engine
from identification.surrogate import Surrogate
from plant import aprbs, sample_initial_states, simulate
from plant.physics import algebraic
from plant.potline import OUTPUT_NAMES
from twin.client import ModelId, TwinClient
from twin.config import TwinConfig
from twin.registry import ModelRegistry, ModelStore
from twin.serving import PREDICTION_SERVICE, REGISTRY_SERVICE, TwinServer, create_server
from twin.serving import server as twin_service

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789abcdef"
WAIT = 10.0
NOMINAL_U = np.array([0.024, 140_000.0, 0.0, 0.0, 0.05])


# ---------------------------------------------------------------------------------------------------------------
# Small models, made here


def _normalization(seed: int):
    rng = np.random.default_rng(seed)
    data = simulate(sample_initial_states(rng, 4), aprbs(rng, 4, 200))
    return fit_normalization(make_samples(data), data.dt)


def make_model(seed: int, m: int = 3, hidden: tuple[int, ...] = (16, 16), scale: float = 0.3) -> Surrogate:
    """A random ensemble (fixed Generator) with a normalisation fitted on a tiny simulated set."""
    rng = np.random.default_rng(seed)
    arch = Architecture(hidden=hidden)
    ws = tuple(rng.normal(0, scale / np.sqrt(a), (m, a, b)) for a, b in arch.layer_shapes)
    bs = tuple(rng.normal(0, 0.05, (m, b)) for _, b in arch.layer_shapes)
    return Surrogate(EnsembleWeights(arch, ws, bs), _normalization(seed))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Surrogate]]:
    """Saved model directories: two dense versions, an exactly sparse one and a diverging one."""
    root = tmp_path_factory.mktemp("twin-models")
    dense1, dense2 = make_model(1), make_model(2)
    sparse = Surrogate(prune(make_model(3).weights, 0.05), dense1.normalization)
    w = dense1.weights
    huge_bias = (*w.biases[:-1], np.full_like(w.biases[-1], 1e300))
    diverging = Surrogate(EnsembleWeights(w.architecture, w.weights, huge_bias), dense1.normalization)
    out = {}
    for name, model, kind in (
        ("v1", dense1, "dense"),
        ("v2", dense2, "dense"),
        ("sparse", sparse, "sparse"),
        ("diverging", diverging, "dense"),
    ):
        out[name] = (save_model(root / name, model, kind=kind, provenance={"seed": 7, "test": name}), model)
    return out


def _rollout(model: Surrogate, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
    """What the server computes, in process: the same engine ("auto") on the same model."""
    return make_rollout_engine(model).simulate(x0, u)


def _files(d: Path) -> tuple[bytes, bytes]:
    return (d / MANIFEST_NAME).read_bytes(), (d / WEIGHTS_NAME).read_bytes()


def _scenarios(b: int = 3, h: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x0 = sample_initial_states(rng, b)
    u = np.broadcast_to(NOMINAL_U, (b, h, 5)).copy()
    u[:, :, 1] += rng.normal(0, 2000.0, (b, h))
    return x0, u


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., tuple[TwinServer, TwinClient]]]:
    """Start servers on fresh stores (stopped without grace at the end) and clients with the token."""
    started: list[tuple[TwinServer, TwinClient]] = []

    def make(*, token: str | None = TOKEN, store: Path | None = None, **settings) -> tuple[TwinServer, TwinClient]:
        cfg = TwinConfig(store=store or tmp_path / f"store{len(started)}", port=0, token=token, grace_s=0.0, **settings)
        server, port = create_server(cfg)
        assert port > 0 and server.address == f"127.0.0.1:{port}"
        server.start()
        client = TwinClient(server.address, token=token, timeout=WAIT)
        started.append((server, client))
        return server, client

    yield make
    for server, client in started:
        client.close()
        server.stop(0)


@pytest.fixture
def serving(make_server, models) -> tuple[TwinServer, TwinClient]:
    """A server whose model "cell" has version 1 (v1) as champion."""
    server, client = make_server()
    model, revision = client.register("cell", models["v1"][0], set_alias="champion")
    assert (model.version, model.alias, revision) == (1, "champion", 2)
    return server, client


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


# ---------------------------------------------------------------------------------------------------------------
# Predictions


def test_predictions_equal_the_in_process_rollout_exactly(serving, models):
    _, client = serving
    x0, u = _scenarios(b=3, h=15)
    p = client.predict("cell", x0, u, include_members=True, outputs=["superheat", "alumina_pct", "power"])
    ref = _rollout(models["v1"][1], x0, u)  # (M, B, H + 1, 8)
    assert p.model.name == "cell" and p.model.version == 1 and p.model.alias == "champion"
    assert p.n_members == 3 and p.dt == 10.0
    np.testing.assert_array_equal(p.members, ref)
    np.testing.assert_allclose(p.members, models["v1"][1].simulate(x0, u), rtol=1e-9, atol=0)  # the reference
    np.testing.assert_array_equal(p.mean, ref.mean(axis=0))
    np.testing.assert_array_equal(p.spread, ref.std(axis=0))
    u_ext = np.concatenate([u, u[:, -1:]], axis=1)
    alg = algebraic(ref.mean(axis=0), u_ext)
    # The outputs come from the kernel's translation of the same formulas: equal to rounding (see
    # tests/test_fast_rollout.py, OUTPUTS_RTOL).
    np.testing.assert_allclose(p.outputs["superheat"], alg.superheat, rtol=1e-12, atol=0)
    np.testing.assert_allclose(p.outputs["alumina_pct"], 100.0 * alg.c_alumina, rtol=1e-12, atol=0)
    np.testing.assert_allclose(p.outputs["power"], alg.power, rtol=1e-12, atol=0)
    assert list(p.outputs) == ["superheat", "alumina_pct", "power"]


def test_default_outputs_no_members_and_packed_encoding(serving):
    _, client = serving
    x0, u = _scenarios(b=2, h=5)
    raw = client.predict("cell", x0, u)
    assert raw.members is None and list(raw.outputs) == ["superheat", "alumina_pct", "alf3_pct", "cell_voltage"]
    req = client.predict_request("cell", x0, u)
    req.encoding = twin_pb2.ARRAY_ENCODING_PACKED
    req.x0.CopyFrom(encode_array(x0, twin_pb2.ARRAY_ENCODING_PACKED))  # packed request arrays work too
    stub = twin_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(serving[0].address))
    r = stub.Predict(req, timeout=WAIT)
    assert len(r.mean.values) == 2 * 6 * 8 and not r.mean.raw and list(r.mean.shape) == [2, 6, 8]
    np.testing.assert_array_equal(np.array(r.mean.values).reshape(2, 6, 8), raw.mean)
    np.testing.assert_array_equal(np.array(r.outputs.values).reshape(2, 6, 4), np.stack(list(raw.outputs.values()), -1))


def test_float32_precision_halves_the_bytes_and_predicts_from_the_rounded_inputs(serving, models):
    _, client = serving
    x0, u = _scenarios(b=4, h=9)
    compact = client.predict("cell", x0, u, precision="float32", include_members=True)
    # The server predicts, in float64, from exactly the float32 values sent ...
    x0_32, u_32 = x0.astype(np.float32).astype(np.float64), u.astype(np.float32).astype(np.float64)
    ref = _rollout(models["v1"][1], x0_32, u_32)  # (M, B, H + 1, 8)
    assert compact.mean.dtype == np.float64
    # ... and sends the results rounded to float32.
    np.testing.assert_array_equal(compact.members, ref.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(compact.mean, ref.mean(axis=0).astype(np.float32).astype(np.float64))
    exact = client.predict("cell", x0, u)
    np.testing.assert_allclose(compact.mean, exact.mean, rtol=1e-5, atol=0)  # what the rounding costs
    # Half the bytes on the wire, both ways.
    req64 = client.predict_request("cell", x0, u).SerializeToString()
    req32 = client.predict_request("cell", x0, u, precision="float32").SerializeToString()
    assert len(req32) < 0.55 * len(req64)
    with pytest.raises(ValueError, match="precision"):
        client.predict("cell", x0, u, precision="float16")


def test_predict_request_codec_round_trips_and_refuses_garbage():
    x0, u = _scenarios(b=2, h=3)
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


def test_every_output_of_the_plant_can_be_asked_for():
    assert list(twin_service.OUTPUT_FUNCTIONS) == list(OUTPUT_NAMES)
    assert set(twin_service.DEFAULT_OUTPUTS) <= set(OUTPUT_NAMES)


def test_serving_info_states_the_limits(make_server):
    server, client = make_server(max_batch=7, max_horizon=99, max_work=1234, keep_previous=2, cache_size=5)
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


X0, U = _scenarios(b=2, h=4)
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
def test_bad_predictions_get_the_right_code_and_a_clear_message(make_server, models, request_, code, words):
    server, client = make_server(max_batch=5, max_horizon=50, max_work=600)
    client.register("cell", models["v1"][0], set_alias="champion")
    stub = twin_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.address))
    got, details = _code(lambda: stub.Predict(request_, timeout=WAIT))
    assert got == getattr(grpc.StatusCode, code), details
    for w in words:
        assert w in details, details
    assert str(server.runtime.config.store) not in details


def test_responses_beyond_the_message_size_are_refused(make_server, models):
    _, client = make_server(max_message_bytes=3 << 20, max_upload_bytes=1 << 20)
    client.register("cell", models["v1"][0], set_alias="champion")
    x0, u = _scenarios(b=40, h=300)
    client.predict("cell", x0, u)  # 40 * 301 * 20 doubles: fits; with 3 members' trajectories it would not
    code, details = _code(lambda: client.predict("cell", x0, u, include_members=True))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_message_bytes" in details and "member" in details
    x0, u = _scenarios(b=200, h=300)  # the request alone is 2.4 MB of u, and its response would not fit
    code, _ = _code(lambda: client.predict("cell", x0, u))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    big = np.ones((1000, 100, 5))  # a 4 MB request: beyond the transport's limit
    code, _ = _code(lambda: client.predict("cell", np.ones((1000, 8)), big))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_no_model_yet_is_not_found_and_not_serving(make_server):
    _, client = make_server()
    assert client.health() == "SERVING" and client.health(REGISTRY_SERVICE) == "SERVING"
    assert client.health(PREDICTION_SERVICE) == "NOT_SERVING"
    code, details = _code(lambda: client.predict("cell", X0, U))
    assert code == grpc.StatusCode.NOT_FOUND and "no model named 'cell'" in details


def test_concurrency_limit_and_deadline(make_server, models, monkeypatch):
    _, client = make_server(max_concurrent_predictions=1)
    client.register("cell", models["v1"][0], set_alias="champion")
    release = threading.Event()
    real = twin_service.predict

    def slow(*args, **kwargs):
        release.wait(WAIT)
        return real(*args, **kwargs)

    monkeypatch.setattr(twin_service, "predict", slow)
    code, details = _code(lambda: client.predict("cell", X0, U, timeout=0.3))  # takes the one slot, times out
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    code, details = _code(lambda: client.predict("cell", X0, U))  # the slot is held until the work ends
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "(1)" in details
    release.set()
    monkeypatch.setattr(twin_service, "predict", real)
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


def test_an_unexpected_error_is_internal_without_details(serving, monkeypatch):
    _, client = serving

    def broken(*args, **kwargs):
        raise RuntimeError("boom in /home/secret/twin/service.py")

    monkeypatch.setattr(twin_service, "predict", broken)
    code, details = _code(lambda: client.predict("cell", X0, U))
    assert code == grpc.StatusCode.INTERNAL and "secret" not in details and "boom" not in details
    monkeypatch.undo()
    assert client.predict("cell", X0, U).model.version == 1  # the server goes on


# ---------------------------------------------------------------------------------------------------------------
# Health, reflection, auth, metrics, TLS


def test_health_and_reflection(serving):
    server, client = serving
    for name in ("", PREDICTION_SERVICE, REGISTRY_SERVICE):
        assert client.health(name) == "SERVING"
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(server.address))
    replies = stub.ServerReflectionInfo(
        iter(
            [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=PREDICTION_SERVICE),
            ]
        ),
        timeout=WAIT,
    )
    listing, files = list(replies)
    names = {s.name for s in listing.list_services_response.service}
    assert {PREDICTION_SERVICE, REGISTRY_SERVICE, "grpc.health.v1.Health"} <= names
    assert files.file_descriptor_response.file_descriptor_proto  # the descriptor of twin.proto


def test_management_needs_the_token(make_server, models):
    server, client = make_server()
    files = _files(models["v1"][0])
    for token, words in ((None, "authorization: Bearer"), ("wrong-token-0123456789", "not valid")):
        with TwinClient(server.address, token=token) as other:
            for call in (
                lambda c=other: c.register("cell", files),
                lambda c=other: c.set_alias("cell", "champion", 1),
                lambda c=other: c.rollback("cell"),
            ):
                code, details = _code(call)
                assert code == grpc.StatusCode.UNAUTHENTICATED and words in details
            assert other.list_models()[0] == []  # reading needs no token
    assert client.register("cell", files)[0].version == 1


def test_management_is_off_without_a_configured_token(make_server, models):
    _, client = make_server(token=None)
    code, details = _code(lambda: client.register("cell", models["v1"][0]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no token configured" in details


def test_token_from_an_environment_variable(make_server, models, monkeypatch):
    monkeypatch.setenv("TWIN_TEST_TOKEN", "from-env-0123456789abcdef")
    server, _ = make_server(token=None, token_env="TWIN_TEST_TOKEN")
    with TwinClient(server.address, token="from-env-0123456789abcdef") as client:
        assert client.register("cell", models["v1"][0])[0].version == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_metrics(make_server, models):
    server, client = make_server(metrics_port=_free_port())
    client.register("cell", models["v1"][0], set_alias="champion")
    client.predict("cell", X0, U)
    _code(lambda: client.predict("cell", X0[:, :5], U))
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=WAIT) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    labels = 'grpc_service="alutwin.v1.PredictionService",grpc_method="Predict"'
    assert f'grpc_server_handled_total{{{labels},grpc_code="OK"}} 1' in text
    assert f'grpc_server_handled_total{{{labels},grpc_code="INVALID_ARGUMENT"}} 1' in text
    assert f'grpc_server_handling_seconds_bucket{{{labels},le="+Inf"}} 2' in text
    assert f"grpc_server_handling_seconds_count{{{labels}}} 2" in text
    assert 'grpc_code="OK"} 1' in text.split("RegisterModel")[1].splitlines()[0]
    assert 'alutwin_twin_active_model_version{model="cell",alias="champion"} 1' in text
    assert "alutwin_twin_predictions_in_flight 0" in text and "alutwin_twin_registry_revision 2" in text
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/other", timeout=WAIT)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls(make_server, models, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    server, _ = make_server(tls_cert=cert, tls_key=key)
    with TwinClient(f"localhost:{server.port}", token=TOKEN, root_certificates=cert.read_bytes()) as client:
        client.register("cell", models["v1"][0], set_alias="champion")
        assert client.predict("cell", X0, U).model.version == 1
    with TwinClient(server.address, timeout=2.0) as plain:
        assert _code(lambda: plain.list_models())[0] == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------------------------------------------------------
# Registry: swap, refusal, rollback, pinning, watch, explain, export


def test_swap_under_concurrent_load_fails_no_request(serving, models):
    server, client = serving
    x0, u = _scenarios(b=2, h=20)
    expected = {1: _rollout(models["v1"][1], x0, u).mean(0), 2: _rollout(models["v2"][1], x0, u).mean(0)}
    seen: dict[int, int] = {1: 0, 2: 0}
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with TwinClient(server.address, timeout=WAIT) as c:
            while not stop.is_set():
                try:
                    p = c.predict("cell", x0, u)
                    if not np.array_equal(p.mean, expected[p.model.version]):
                        failures.append(f"version {p.model.version} answered with another version's numbers")
                    seen[p.model.version] += 1
                except Exception as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    assert client.register("cell", models["v2"][0], set_alias="champion")[0].version == 2
    time.sleep(0.2)
    for _ in range(3):
        client.set_alias("cell", "champion", 1)
        time.sleep(0.1)
        client.rollback("cell")  # back to 2
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(WAIT)
    assert not failures, failures[:3]
    assert seen[1] > 0 and seen[2] > 0


def test_a_call_in_flight_finishes_on_the_version_it_started_with(serving, models, monkeypatch):
    _, client = serving
    started, release = threading.Event(), threading.Event()
    real = twin_service.predict

    def held(served, *args, **kwargs):
        started.set()
        release.wait(WAIT)
        return real(served, *args, **kwargs)

    monkeypatch.setattr(twin_service, "predict", held)
    result: list = []
    t = threading.Thread(target=lambda: result.append(client.predict("cell", X0, U)))
    t.start()
    assert started.wait(WAIT)
    monkeypatch.setattr(twin_service, "predict", real)
    client.register("cell", models["v2"][0], set_alias="champion")
    assert client.predict("cell", X0, U).model.version == 2
    release.set()
    t.join(WAIT)
    (p,) = result
    assert p.model.version == 1
    np.testing.assert_array_equal(p.mean, _rollout(models["v1"][1], X0, U).mean(0))


def _hostile_uploads(good: Path, diverging: Path) -> dict[str, tuple[bytes, bytes, str]]:
    manifest, weights = _files(good)
    doc = json.loads(manifest)

    def with_doc(**changes) -> bytes:
        d = json.loads(manifest)
        for path, value in changes.items():
            node = d
            *parents, leaf = path.split("__")
            for p in parents:
                node = node[p]
            node[leaf] = value
        return json.dumps(d).encode()

    tensors = {k: np.array(v) for k, v in safetensors.numpy.load(weights).items()}
    tensors["layer1.weight"][0, 0, 0] = np.nan
    nan_blob = safetensors.numpy.save(tensors)
    nan_manifest = with_doc(weights__sha256=hashlib.sha256(nan_blob).hexdigest(), weights__bytes=len(nan_blob))
    pickled = pickle.dumps({"layer0.weight": np.zeros(3)})
    return {
        "pickle": (manifest, pickled, "pickle"),
        "truncated": (manifest, weights[: len(weights) // 2], "weights"),
        "other weights": (manifest, _files(diverging)[1], "checksum"),
        "not json": (b"{not json", weights, "not valid JSON"),
        "path traversal": (with_doc(weights__file="../../../etc/passwd"), weights, "weights.file"),
        "huge layers": (with_doc(architecture__hidden=[100000, 16]), weights, "architecture"),
        "extra key": (json.dumps({**doc, "exec": "rm -rf /"}).encode(), weights, "unexpected"),
        "nan weights": (nan_manifest, nan_blob, "NaN"),
        "diverging": (*_files(diverging), "diverges"),
        "empty": (manifest, b"", "weights is empty"),
    }


def test_corrupt_or_hostile_uploads_are_refused_and_the_old_version_keeps_serving(serving, models):
    server, client = serving
    store = server.runtime.config.store
    for label, (manifest, weights, words) in _hostile_uploads(models["v1"][0], models["diverging"][0]).items():
        code, details = _code(lambda m=manifest, w=weights: client.register("cell", (m, w), set_alias="champion"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (label, details)
        assert words in details, (label, details)
        assert str(store) not in details and "staging" not in details, (label, details)
        p = client.predict("cell", X0, U)
        assert p.model.version == 1, label
    models_, revision = client.list_models()
    assert revision == 2 and models_[0].aliases == {"champion": 1} and list(models_[0].versions) == [1]
    assert sorted(p.name for p in (store / "models" / "cell").iterdir()) == ["1"]
    assert list((store / ".staging").iterdir()) == []
    assert client.register("cell", models["v2"][0])[0].version == 2  # refusals used up no version number


def test_upload_size_cap(make_server, models):
    _, client = make_server(max_upload_bytes=1000)
    code, details = _code(lambda: client.register("cell", models["v1"][0]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 1000" in details


def test_rollback_and_compare_and_set(serving, models):
    _, client = serving
    code, details = _code(lambda: client.rollback("cell"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no earlier version" in details
    client.register("cell", models["v2"][0], set_alias="champion")
    assert client.predict("cell", X0, U).model.version == 2
    assert client.rollback("cell") == (1, 2, 5)
    assert client.predict("cell", X0, U).model.version == 1
    assert client.set_alias("cell", "challenger", 2, expected_version=0) == (0, 6)
    code, details = _code(lambda: client.set_alias("cell", "champion", 2, expected_version=2))
    assert code == grpc.StatusCode.ABORTED and "points at version 1" in details
    assert client.set_alias("cell", "champion", 2, expected_version=1) == (1, 7)
    assert client.predict("cell", X0, U, alias="challenger").model == ModelId("cell", 2, "challenger")
    assert _code(lambda: client.set_alias("cell", "champion", 7))[0] == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: client.set_alias("cell", "Bad Alias", 1))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: client.rollback("ghost"))[0] == grpc.StatusCode.NOT_FOUND


def test_a_pinned_version_stays_through_swaps(serving, models):
    _, client = serving
    pinned = client.pin("cell")
    assert pinned.version == 1
    client.register("cell", models["v2"][0], set_alias="champion")
    assert pinned.predict(X0, U).model == client.predict("cell", X0, U, version=1).model
    assert pinned.predict(X0, U).model.version == 1 and pinned.predict(X0, U).model.alias == ""
    assert client.predict("cell", X0, U).model.version == 2


def test_watch_streams_a_snapshot_then_every_change(serving, models):
    _, client = serving
    with client.watch() as stream:
        first = next(stream)
        assert first.type == "SNAPSHOT" and first.revision == 2
        assert [(m.name, m.aliases) for m in first.models] == [("cell", {"champion": 1})]
        client.register("cell", models["v2"][0], set_alias="champion")
        client.rollback("cell")
        events = [next(stream) for _ in range(3)]
    assert [(e.type, e.revision, e.version, e.alias, e.previous_version) for e in events] == [
        ("VERSION_REGISTERED", 3, 2, "", 0),
        ("ALIAS_MOVED", 4, 2, "champion", 1),
        ("ROLLED_BACK", 5, 1, "champion", 2),
    ]
    assert all(e.name == "cell" and e.time_ms > 0 for e in events)


def test_explain_and_get_model(serving, models):
    _, client = serving
    client.register("cell", models["sparse"][0], set_alias="sparse", description="pruned at 0.05")
    info = client.get_model("cell", alias="sparse")
    sparse = models["sparse"][1].weights
    assert info.model.version == 2 and info.kind == "sparse" and info.exactly_sparse and info.aliases == ("sparse",)
    assert info.nonzero_weights == int(sparse.nonzero().sum()) < info.total_weights == 3 * (13 * 16 + 16 * 16 + 16 * 8)
    assert info.description == "pruned at 0.05" and info.loaded and info.hidden == (16, 16) and info.dt == 10.0
    ex = client.explain("cell", version=2)
    assert [(s.n_in, s.n_out) for s in ex.layers] == [(13, 16), (16, 16), (16, 8)]
    assert [s.nonzero for s in ex.layers] == [int(np.count_nonzero(w)) for w in sparse.weights]
    np.testing.assert_array_equal(ex.path.share, path_dependency(sparse).mean(axis=0))
    assert ex.path.share.shape == (8, 13) and ex.path.rows[5] == "dT_bath/dt" and ex.path.cols[12] == "acd"
    assert 0 <= ex.jacobian.scores["precision"] <= 1 and ex.provenance == {"seed": 7, "test": "sparse"}
    assert ex.metrics is None
    dense = client.explain("cell")
    assert np.all(dense.path.share == 1.0)  # every input reaches every output of a dense model


def test_export_rebuilds_the_model(serving, models):
    _, client = serving
    exported = client.export("cell")
    assert exported.model.version == 1
    assert (exported.manifest_json, exported.weights) == _files(models["v1"][0])
    surrogate = exported.load().surrogate
    np.testing.assert_array_equal(surrogate.simulate(X0, U), models["v1"][1].simulate(X0, U))


# ---------------------------------------------------------------------------------------------------------------
# The command: SIGTERM drains


def test_sigterm_drains_in_flight_calls(tmp_path, models):
    store = tmp_path / "store"
    registry = ModelRegistry(ModelStore(store))
    registry.register("cell", *_files(models["v1"][0]), set_alias="champion")
    registry.close()
    metrics_port = _free_port()
    config = tmp_path / "twin.yaml"
    config.write_text(
        f"store: store\nport: 0\ngrace_s: 20\nengine: numpy\nmetrics_port: {metrics_port}\nmax_horizon: 100000\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", "from alutwin.cli import main; main()", "twin", "serve", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        line = proc.stdout.readline()
        assert "serving alutwin.v1.PredictionService, alutwin.v1.ModelRegistry on 127.0.0.1:" in line, (
            line + proc.stderr.read()
        )
        address = line.split(" on ")[1].split()[0]
        x0, u = _scenarios(b=4, h=20_000)  # one to two seconds of rollout with the numpy engine
        result: list = []
        with TwinClient(address, timeout=60) as client:
            assert client.health(PREDICTION_SERVICE) == "SERVING"
            t = threading.Thread(target=lambda: result.append(client.predict("cell", x0, u)))
            t.start()
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            deadline = time.monotonic() + WAIT
            while "alutwin_twin_predictions_in_flight 1" not in urllib.request.urlopen(url).read().decode():
                assert time.monotonic() < deadline, "the prediction never started"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + WAIT
            while client.health(PREDICTION_SERVICE) != "NOT_SERVING":  # health checks are still answered ...
                assert time.monotonic() < deadline, "still serving after SIGTERM"
                time.sleep(0.02)
            code, details = _code(lambda: client.predict("cell", x0[:1], u[:1, :5]))  # ... new calls refused ...
            assert code == grpc.StatusCode.UNAVAILABLE and "draining" in details
            assert t.is_alive()
            t.join(60)  # ... and the one in flight finishes
            assert result and result[0].model.version == 1 and result[0].mean.shape == (4, 20_001, 8)
            assert np.isfinite(result[0].mean).all()
        assert proc.wait(timeout=WAIT) == 0
        out = proc.stdout.read()
        assert "draining" in out and "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


_HEAP_PROBE = """
import ctypes, platform, sys
from twin.serving.server import keep_freed_memory
applied = keep_freed_memory(int(sys.argv[1]))
if platform.libc_ver()[0] != "glibc":
    print(applied, -1)
    raise SystemExit
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
block = bytes(8 << 20)  # the size of a potline Predict's arrays
del block
print(applied, mallinfo2().fordblks)
"""


@pytest.mark.parametrize("mib", [0, 64])
def test_keep_freed_memory_keeps_a_large_freed_block_for_reuse(mib):
    """With heap_keep_mib the twin's process keeps a freed 8 MiB block in its heap (glibc: free bytes of the
    heap); by default glibc maps such a block fresh and unmaps it when freed."""
    run = subprocess.run(
        [sys.executable, "-c", _HEAP_PROBE, str(mib)], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert run.returncode == 0, run.stderr
    applied, free_bytes = run.stdout.split()
    if free_bytes == "-1":  # not glibc: nothing to tune, and nothing claimed
        assert applied == "False"
        return
    assert applied == str(mib > 0)
    if mib:
        assert int(free_bytes) >= 8 << 20
    else:
        assert int(free_bytes) < 8 << 20
