"""The twin's model registry over gRPC: hot swap under load, a call in flight finishing on its version, refused
uploads, the upload cap, rollback and compare-and-set, pinning, Watch, GetModel and ExplainModel, export."""

from __future__ import annotations

import hashlib
import json
import pickle
import threading
import time

import grpc
import numpy as np
import safetensors.numpy

from identification.metrics import path_dependency
from plant import sample_initial_states
from twin.client import ModelId, TwinClient
from twin.serving import prediction

WAIT = 10.0
NOMINAL_U = np.array([0.024, 140_000.0, 0.0, 0.0, 0.05])
# The server's ensemble mean and numpy's mean of the same member trajectories: two implementations, equal to
# rounding; the versions compared here differ by far more.
MEAN_RTOL = 1e-12


X0 = sample_initial_states(np.random.default_rng(0), 2)  # (2, 8)
U = np.broadcast_to(NOMINAL_U, (2, 4, 5)).copy()  # (2, 4, 5)


def test_swap_under_concurrent_load_fails_no_request(serving, twin_models, scenarios, rollout):
    server, client = serving
    x0, u = scenarios(b=2, h=20)
    expected = {1: rollout(twin_models["v1"][1], x0, u).mean(0), 2: rollout(twin_models["v2"][1], x0, u).mean(0)}
    seen: dict[int, int] = {1: 0, 2: 0}
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with TwinClient(server.address, timeout=WAIT) as c:
            while not stop.is_set():
                try:
                    p = c.predict("cell", x0, u)
                    if not np.allclose(p.mean, expected[p.model.version], rtol=MEAN_RTOL, atol=0):
                        failures.append(f"version {p.model.version} answered with another version's numbers")
                    seen[p.model.version] += 1
                except Exception as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    assert client.register("cell", twin_models["v2"][0], set_alias="champion")[0].version == 2
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


def test_a_call_in_flight_finishes_on_the_version_it_started_with(serving, twin_models, monkeypatch, rollout):
    _, client = serving
    started, release = threading.Event(), threading.Event()
    real = prediction.predict

    def held(served, *args, **kwargs):
        started.set()
        release.wait(WAIT)
        return real(served, *args, **kwargs)

    monkeypatch.setattr(prediction, "predict", held)
    result: list = []
    t = threading.Thread(target=lambda: result.append(client.predict("cell", X0, U)))
    t.start()
    assert started.wait(WAIT)
    monkeypatch.setattr(prediction, "predict", real)
    client.register("cell", twin_models["v2"][0], set_alias="champion")
    assert client.predict("cell", X0, U).model.version == 2
    release.set()
    t.join(WAIT)
    (p,) = result
    assert p.model.version == 1
    np.testing.assert_allclose(p.mean, rollout(twin_models["v1"][1], X0, U).mean(0), rtol=MEAN_RTOL, atol=0)


def _hostile_uploads(good: tuple[bytes, bytes], diverging: tuple[bytes, bytes]) -> dict[str, tuple[bytes, bytes, str]]:
    """Uploads the registry must refuse, made from the files of a good and a diverging model, with a word of
    the refusal each."""
    manifest, weights = good
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
        "other weights": (manifest, diverging[1], "checksum"),
        "not json": (b"{not json", weights, "not valid JSON"),
        "path traversal": (with_doc(weights__file="../../../etc/passwd"), weights, "weights.file"),
        "huge layers": (with_doc(architecture__hidden=[100000, 16]), weights, "architecture"),
        "extra key": (json.dumps({**doc, "exec": "rm -rf /"}).encode(), weights, "unexpected"),
        "nan weights": (nan_manifest, nan_blob, "NaN"),
        "diverging": (*diverging, "diverges"),
        "empty": (manifest, b"", "weights is empty"),
    }


def test_corrupt_or_hostile_uploads_are_refused_and_the_old_version_keeps_serving(
    serving, twin_models, model_files, rpc_error
):
    server, client = serving
    store = server.runtime.config.store
    uploads = _hostile_uploads(model_files(twin_models["v1"][0]), model_files(twin_models["diverging"][0]))
    for label, (manifest, weights, words) in uploads.items():
        code, details = rpc_error(lambda m=manifest, w=weights: client.register("cell", (m, w), set_alias="champion"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (label, details)
        assert words in details, (label, details)
        assert str(store) not in details and "staging" not in details, (label, details)
        p = client.predict("cell", X0, U)
        assert p.model.version == 1, label
    models_, revision = client.list_models()
    assert revision == 2 and models_[0].aliases == {"champion": 1} and list(models_[0].versions) == [1]
    assert sorted(p.name for p in (store / "models" / "cell").iterdir()) == ["1"]
    assert list((store / ".staging").iterdir()) == []
    assert client.register("cell", twin_models["v2"][0])[0].version == 2  # refusals used up no version number


def test_upload_size_cap(twin_server, twin_models, rpc_error):
    _, client = twin_server(max_upload_bytes=1000)
    code, details = rpc_error(lambda: client.register("cell", twin_models["v1"][0]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 1000" in details


def test_rollback_and_compare_and_set(serving, twin_models, rpc_error):
    _, client = serving
    code, details = rpc_error(lambda: client.rollback("cell"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no earlier version" in details
    client.register("cell", twin_models["v2"][0], set_alias="champion")
    assert client.predict("cell", X0, U).model.version == 2
    assert client.rollback("cell") == (1, 2, 5)
    assert client.predict("cell", X0, U).model.version == 1
    assert client.set_alias("cell", "challenger", 2, expected_version=0) == (0, 6)
    code, details = rpc_error(lambda: client.set_alias("cell", "champion", 2, expected_version=2))
    assert code == grpc.StatusCode.ABORTED and "points at version 1" in details
    assert client.set_alias("cell", "champion", 2, expected_version=1) == (1, 7)
    assert client.predict("cell", X0, U, alias="challenger").model == ModelId("cell", 2, "challenger")
    assert rpc_error(lambda: client.set_alias("cell", "champion", 7))[0] == grpc.StatusCode.NOT_FOUND
    assert rpc_error(lambda: client.set_alias("cell", "Bad Alias", 1))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_error(lambda: client.rollback("ghost"))[0] == grpc.StatusCode.NOT_FOUND


def test_a_pinned_version_stays_through_swaps(serving, twin_models):
    _, client = serving
    pinned = client.pin("cell")
    assert pinned.version == 1
    client.register("cell", twin_models["v2"][0], set_alias="champion")
    assert pinned.predict(X0, U).model == client.predict("cell", X0, U, version=1).model
    assert pinned.predict(X0, U).model.version == 1 and pinned.predict(X0, U).model.alias == ""
    assert client.predict("cell", X0, U).model.version == 2


def test_watch_streams_a_snapshot_then_every_change(serving, twin_models):
    _, client = serving
    with client.watch() as stream:
        first = next(stream)
        assert first.type == "SNAPSHOT" and first.revision == 2
        assert [(m.name, m.aliases) for m in first.models] == [("cell", {"champion": 1})]
        client.register("cell", twin_models["v2"][0], set_alias="champion")
        client.rollback("cell")
        events = [next(stream) for _ in range(3)]
    assert [(e.type, e.revision, e.version, e.alias, e.previous_version) for e in events] == [
        ("VERSION_REGISTERED", 3, 2, "", 0),
        ("ALIAS_MOVED", 4, 2, "champion", 1),
        ("ROLLED_BACK", 5, 1, "champion", 2),
    ]
    assert all(e.name == "cell" and e.time_ms > 0 for e in events)


def test_explain_and_get_model(serving, twin_models):
    _, client = serving
    client.register("cell", twin_models["sparse"][0], set_alias="sparse", description="30 % of the weights")
    info = client.get_model("cell", alias="sparse")
    sparse = twin_models["sparse"][1].weights
    assert info.model.version == 2 and info.kind == "sparse" and info.exactly_sparse and info.aliases == ("sparse",)
    assert info.nonzero_weights == int(sparse.nonzero().sum()) < info.total_weights == 3 * (13 * 16 + 16 * 16 + 16 * 8)
    assert info.description == "30 % of the weights" and info.loaded and info.hidden == (16, 16) and info.dt == 10.0
    ex = client.explain("cell", version=2)
    assert ex.model == ModelId("cell", 2) and ex.jacobian_points > 0 and 0 < ex.jacobian_rel_threshold < 1
    assert [(s.n_in, s.n_out) for s in ex.layers] == [(13, 16), (16, 16), (16, 8)]
    assert [s.nonzero for s in ex.layers] == [int(np.count_nonzero(w)) for w in sparse.weights]
    # The server runs the same code on the same weights (files round-trip them bit for bit): equal exactly.
    np.testing.assert_array_equal(ex.path.share, path_dependency(sparse).mean(axis=0))
    assert ex.path.share.shape == (8, 13) and ex.path.rows[5] == "dT_bath/dt" and ex.path.cols[12] == "acd"
    assert 0 <= ex.jacobian.scores["precision"] <= 1 and ex.provenance == {"seed": 7, "test": "sparse"}
    assert ex.metrics is None
    dense = client.explain("cell")
    assert dense.model == ModelId("cell", 1, "champion")
    assert np.all(dense.path.share == 1.0)  # every input reaches every output of a dense model


def test_export_rebuilds_the_model(serving, twin_models, model_files):
    _, client = serving
    exported = client.export("cell")
    assert exported.model.version == 1
    assert (exported.manifest_json, exported.weights) == model_files(twin_models["v1"][0])
    surrogate = exported.load().surrogate
    # The same numpy code on the same weights (an export round-trips them bit for bit): equal exactly.
    np.testing.assert_array_equal(surrogate.simulate(X0, U), twin_models["v1"][1].simulate(X0, U))
