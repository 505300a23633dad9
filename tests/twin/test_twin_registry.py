"""The twin's parts without a server: model store (atomic, crash leftovers, exclusive), registry (persistence,
refusal of tampered files, retention, watchers, failed writes), config, metrics families, array codec."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from alutwin.codec import decode_array, encode_array, serialize_predict_response
from alutwin.v1 import twin_pb2
from identification.modelfile import MANIFEST_NAME, WEIGHTS_NAME, ModelFileError, load_model_bytes, save_model
from twin.client import Prediction
from twin.config import TwinConfig
from twin.registry import (
    ModelRegistry,
    ModelStore,
    NotFound,
    NotServable,
    StoreError,
    StoreState,
)
from twin.results import EventType
from twin.serving import LATENCY_BUCKETS, TwinMetrics

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, random_surrogate) -> list[tuple[bytes, bytes]]:
    """The two files of four small models (2 members, hidden (8, 8), the signals' typical ranges as
    normalisation)."""
    root = tmp_path_factory.mktemp("registry-models")
    out = []
    for seed in range(4):
        model = random_surrogate(seed, 2, hidden=(8, 8), weight_std=0.3, bias_std=0.05, norm="box")
        d = save_model(root / str(seed), model, kind="dense", provenance={"seed": seed})
        out.append(((d / MANIFEST_NAME).read_bytes(), (d / WEIGHTS_NAME).read_bytes()))
    return out


def _open(root: Path, **kwargs) -> ModelRegistry:
    return ModelRegistry(ModelStore(root), **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Store and persistence


def test_state_survives_a_restart(tmp_path, files):
    reg = _open(tmp_path)
    reg.register("cell", *files[0], set_alias="champion", description="first")
    reg.register("cell", *files[1], set_alias="champion")
    reg.set_alias("cell", "challenger", 1)
    assert reg.rollback("cell") == (1, 2, 6)
    reg.close()
    reg = _open(tmp_path)
    state = reg.state
    rec = state.models["cell"]
    assert state.revision == 6 and dict(rec.aliases) == {"champion": 1, "challenger": 1}
    assert rec.history["champion"] == () and "challenger" not in rec.history and rec.next_version == 3
    assert rec.versions[1].description == "first" and rec.versions[2].kind == "dense"
    assert reg.resolve("cell").version == 1 and reg.servable()
    served, revision = reg.register("cell", *files[2])
    assert (served.version, revision) == (3, 7)
    reg.close()
    assert json.loads((tmp_path / "registry.json").read_text())["revision"] == 7


def test_crash_leftovers_are_cleaned_and_recovered(tmp_path, files):
    reg = _open(tmp_path)
    reg.register("cell", *files[0], set_alias="champion")
    reg.close()
    (tmp_path / ".staging" / "upload-half").mkdir()
    (tmp_path / ".staging" / "upload-half" / WEIGHTS_NAME).write_bytes(b"half")
    shutil.copytree(tmp_path / "models" / "cell" / "1", tmp_path / "models" / "cell" / "5")  # renamed, not recorded
    doc = json.loads((tmp_path / "registry.json").read_text())
    doc["models"]["cell"]["versions"]["9"] = {"kind": "dense", "registered": "x", "description": ""}  # dir gone
    doc["models"]["cell"]["aliases"]["stale"] = 9
    (tmp_path / "registry.json").write_text(json.dumps(doc))
    reg = _open(tmp_path)
    rec = reg.state.models["cell"]
    assert list((tmp_path / ".staging").iterdir()) == []
    assert sorted(rec.versions) == [1, 5] and rec.versions[5].description == "recovered at start"
    assert dict(rec.aliases) == {"champion": 1} and rec.next_version == 10
    assert reg.resolve("cell", version=5).version == 5
    reg.close()


def test_an_unreadable_state_file_stops_the_start(tmp_path):
    ModelStore(tmp_path).close()
    (tmp_path / "registry.json").write_text('{"format": "something else"}')
    with pytest.raises(StoreError, match=r"registry state .* is unreadable"):
        ModelStore(tmp_path).read_state()


def test_several_servers_share_a_store(tmp_path):
    # replicas: a second store on the same directory opens (changes are serialised per change, see test_replicas)
    first, second = ModelStore(tmp_path), ModelStore(tmp_path)
    first.write_state(StoreState(revision=5))
    assert second.read_state().revision == 5
    first.close()
    second.close()


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"format": "alutwin-twin-registry", "format_version": 1, "revision": -1, "models": {}}, "revision"),
        ({"format": "alutwin-twin-registry", "format_version": 1, "revision": 0, "models": {"../x": {}}}, "name"),
        (
            {
                "format": "alutwin-twin-registry",
                "format_version": 1,
                "revision": 0,
                "models": {"m": {"next_version": 1, "versions": {"01": {}}, "aliases": {}, "history": {}}},
            },
            "version key",
        ),
    ],
)
def test_state_documents_are_validated(doc, words):
    with pytest.raises(ValueError, match=words):
        StoreState.from_dict(doc)


# ---------------------------------------------------------------------------------------------------------------
# Registry behaviour


def test_a_tampered_version_is_never_served(tmp_path, files):
    reg = _open(tmp_path)
    reg.register("cell", *files[0])
    reg.register("cell", *files[1], set_alias="champion")
    reg.close()
    weights = tmp_path / "models" / "cell" / "2" / WEIGHTS_NAME
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    reg = _open(tmp_path)
    assert not reg.servable()
    with pytest.raises(NotServable) as err:
        reg.resolve("cell")
    message = str(err.value)
    assert "champion" in message and "version 2" in message and "weights.safetensors: checksum mismatch" in message
    assert str(tmp_path) not in message
    with pytest.raises(NotServable):
        reg.set_alias("cell", "champion", 2)
    assert reg.set_alias("cell", "champion", 1) == (2, 4)
    assert reg.servable() and reg.resolve("cell").version == 1
    reg.close()


def test_retention_of_loaded_versions(tmp_path, files):
    reg = _open(tmp_path, keep_previous=1, cache_size=0)
    for f in files:
        reg.register("cell", *f, set_alias="champion")
    assert [reg.is_loaded("cell", v) for v in (1, 2, 3, 4)] == [False, False, True, True]
    assert reg.resolve("cell", version=1).version == 1  # loaded on demand
    assert not reg.is_loaded("cell", 1)  # and not kept (cache_size 0)
    assert reg.rollback("cell")[0] == 3  # instant: 3 was kept
    reg.close()
    reg = _open(tmp_path, keep_previous=0, cache_size=1)
    reg.resolve("cell", version=1)
    reg.resolve("cell", version=2)
    assert [reg.is_loaded("cell", v) for v in (1, 2, 3)] == [False, True, True]
    reg.close()


def test_unknown_names_and_versions(tmp_path, files):
    reg = _open(tmp_path)
    reg.register("cell", *files[0], set_alias="champion")
    for call, words in (
        (lambda: reg.resolve("other"), "no model named 'other'"),
        (lambda: reg.resolve("cell", version=4), "no version 4"),
        (lambda: reg.resolve("cell", alias="beta"), "no alias 'beta'"),
        (lambda: reg.rollback("cell", "beta"), "no alias 'beta'"),
    ):
        with pytest.raises(NotFound, match=words):
            call()
    reg.close()


def test_a_failed_state_write_changes_nothing(tmp_path, files, monkeypatch):
    reg = _open(tmp_path)
    reg.register("cell", *files[0], set_alias="champion")
    reg.register("cell", *files[1])

    def full_disk(state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reg.store, "write_state", full_disk)
    with pytest.raises(OSError):
        reg.set_alias("cell", "champion", 2)
    assert reg.state.revision == 3 and reg.resolve("cell").version == 1
    reg.close()


def test_a_slow_watcher_gets_a_fresh_snapshot(tmp_path, files):
    reg = _open(tmp_path, watch_queue_size=2)
    reg.register("cell", *files[0], set_alias="champion")
    watcher = reg.watch()
    first = watcher.get(0.1)
    assert first.type is EventType.SNAPSHOT and first.revision == 2
    assert watcher.get(0.01) is None
    reg.register("cell", *files[1], set_alias="champion")  # 2 events: fills the queue
    assert [watcher.get(0.1).revision for _ in range(2)] == [3, 4]
    for f in files[2:]:
        reg.register("cell", *f, set_alias="champion")  # 4 events: overflows
    snap = watcher.get(0.1)
    assert snap.type is EventType.SNAPSHOT and snap.revision == 8
    assert [(m.name, m.aliases["champion"], sorted(m.versions)) for m in snap.models] == [("cell", 4, [1, 2, 3, 4])]
    assert watcher.get(0.01) is None and watcher.resyncs == 1
    other = reg.watch("other")
    other.get(0.1)
    reg.set_alias("cell", "champion", 1)
    assert other.get(0.01) is None  # only its model's events
    reg.close()


# ---------------------------------------------------------------------------------------------------------------
# Config


def test_deploy_config_loads():
    cfg = TwinConfig.from_yaml(REPO / "deploy" / "twin.yaml")
    assert cfg.loopback and not cfg.tls and cfg.store.is_absolute() and cfg.token is None


def test_config_from_yaml_resolves_paths_against_the_file(tmp_path):
    (tmp_path / "twin.yaml").write_text("store: models\nport: 0\ntls_cert: c.pem\ntls_key: /abs/k.pem\n")
    cfg = TwinConfig.from_yaml(tmp_path / "twin.yaml")
    assert cfg.store == tmp_path / "models" and cfg.tls_cert == tmp_path / "c.pem"
    assert cfg.tls_key == Path("/abs/k.pem") and cfg.tls


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"port": 0, "bogus": 1}, "unknown key 'bogus'"),
        ({"port": 0}, "missing required key 'store'"),
        ({"store": "s", "port": 70000}, "port: must be"),
        ({"store": "s", "port": 0, "max_watchers": 16}, "max_watchers"),
        ({"store": "s", "port": 0, "token": "short"}, "at least 16"),
        ({"store": "s", "port": 0, "token": "x" * 16, "token_env": "T"}, "not both"),
        ({"store": "s", "port": 0, "token_env": "not a name"}, "token_env"),
        ({"store": "s", "port": 0, "tls_cert": "c.pem"}, "go together"),
        ({"store": "s", "port": 0, "engine": "gpu"}, "engine: must be one of"),
        ({"store": "s", "port": 0, "grace_s": -1}, "grace_s"),
        ({"store": "s", "port": 0, "heap_keep_mib": -1}, "heap_keep_mib: must be"),
        ({"store": "s", "port": 0, "heap_keep_mib": 4096}, "heap_keep_mib: must be"),
        ({"store": "s", "port": 0, "max_upload_bytes": 63 << 20}, "max_message_bytes"),
    ],
)
def test_bad_configs_are_refused(settings, words):
    with pytest.raises(ValueError, match=words):
        TwinConfig.from_mapping(settings)


def test_token_resolution(monkeypatch):
    cfg = TwinConfig(store=Path("s"), port=0, token_env="TWIN_T")
    monkeypatch.delenv("TWIN_T", raising=False)
    assert cfg.resolve_token() is None
    monkeypatch.setenv("TWIN_T", "0123456789abcdefXYZ")
    assert cfg.resolve_token() == "0123456789abcdefXYZ"
    monkeypatch.setenv("TWIN_T", "short")
    with pytest.raises(ValueError, match="at least 16"):
        cfg.resolve_token()
    assert not TwinConfig(store=Path("s"), port=0, host="0.0.0.0").loopback
    assert TwinConfig(store=Path("s"), port=0, host="::1").loopback


# ---------------------------------------------------------------------------------------------------------------
# Metrics and array codec


def _k(name: str, **labels: str) -> tuple[str, frozenset]:
    return name, frozenset(labels.items())


def test_twin_metrics_read_the_server_at_scrape_time():
    active = [("cell", "champion", 3), ('a"b\\c', "x", 1)]
    revision = [5]
    m = TwinMetrics(lambda: active, lambda: 2, lambda: revision[0])
    for seconds, code in ((0.05, grpc.StatusCode.OK), (0.5, grpc.StatusCode.OK), (5.0, grpc.StatusCode.NOT_FOUND)):
        m.observe("/alutwin.v1.PredictionService/Predict", code, seconds)
    m.observe("not-a-method-name", grpc.StatusCode.UNIMPLEMENTED, 0.001)

    def scrape() -> dict[tuple[str, frozenset], float]:
        text = generate_latest(m.registry).decode()
        return {_k(x.name, **x.labels): x.value for f in text_string_to_metric_families(text) for x in f.samples}

    got = scrape()
    call = {"grpc_service": "alutwin.v1.PredictionService", "grpc_method": "Predict"}
    assert got[_k("grpc_server_handled_total", **call, grpc_code="OK")] == 2
    assert got[_k("grpc_server_handled_total", **call, grpc_code="NOT_FOUND")] == 1
    unknown = {"grpc_service": "unknown", "grpc_method": "not-a-method-name", "grpc_code": "UNIMPLEMENTED"}
    assert got[_k("grpc_server_handled_total", **unknown)] == 1
    bounds = sorted(float(dict(labels)["le"]) for name, labels in got if name == "grpc_server_handling_seconds_bucket")
    assert bounds == sorted([*LATENCY_BUCKETS, float("inf")] * 2)  # Predict and the unknown method
    cumulative = [
        got[_k("grpc_server_handling_seconds_bucket", **call, le=le)] for le in ("0.02", "0.1", "1.0", "+Inf")
    ]
    assert cumulative == [0, 1, 2, 3]
    assert got[_k("grpc_server_handling_seconds_sum", **call)] == pytest.approx(5.55, rel=1e-12)
    assert got[_k("alutwin_twin_active_model_version", model="cell", alias="champion")] == 3
    assert got[_k("alutwin_twin_active_model_version", model='a"b\\c', alias="x")] == 1  # escaped and back
    assert got[_k("alutwin_twin_predictions_in_flight")] == 2 and got[_k("alutwin_twin_registry_revision")] == 5
    active.pop()
    revision[0] = 6
    again = scrape()  # the gauges follow the server, read when scraped
    assert again[_k("alutwin_twin_registry_revision")] == 6
    assert sum(name == "alutwin_twin_active_model_version" for name, _ in again) == 1


@pytest.mark.parametrize("encoding", [twin_pb2.ARRAY_ENCODING_RAW, twin_pb2.ARRAY_ENCODING_PACKED])
@pytest.mark.parametrize("shape", [(3, 4, 8), (0, 8), (1,)])
def test_array_codec_round_trip(encoding, shape):
    a = np.random.default_rng(0).normal(size=shape) * 1e3
    msg = twin_pb2.DoubleArray.FromString(encode_array(a, encoding).SerializeToString())
    assert (len(msg.raw) > 0) == (encoding == twin_pb2.ARRAY_ENCODING_RAW and a.size > 0)
    back = decode_array(msg, "a", len(shape))
    assert back.shape == shape and back.tobytes() == a.tobytes()


def test_array_codec_refuses_inconsistent_messages():
    with pytest.raises(ValueError, match="needs 16"):
        decode_array(twin_pb2.DoubleArray(shape=[2, 8], values=[0.0] * 15), "x0")
    with pytest.raises(ValueError, match="needs 128"):
        decode_array(twin_pb2.DoubleArray(shape=[2, 8], raw=b"\0" * 120), "x0")
    with pytest.raises(ValueError, match="2 axes"):
        decode_array(twin_pb2.DoubleArray(shape=[16]), "x0", 2)
    with pytest.raises(ValueError, match="too large"):
        decode_array(twin_pb2.DoubleArray(shape=[1 << 50, 1 << 50]), "x0")


def test_load_model_bytes(files):
    manifest, weights = files[0]
    loaded = load_model_bytes(manifest, weights)
    assert loaded.kind == "dense" and loaded.surrogate.n_members == 2
    with pytest.raises(ModelFileError, match="checksum"):
        load_model_bytes(manifest, files[1][1])


def _response(encoding: int, members: bool) -> tuple[twin_pb2.PredictResponse, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    header = twin_pb2.PredictResponse(
        model=twin_pb2.ResolvedModel(name="cell", version=3, alias="champion"),
        output_names=["superheat", "power"],
        n_members=2,
        dt_s=10.0,
    )
    arrays = {
        "mean": rng.normal(size=(3, 5, 8)),
        "spread": rng.random((3, 5, 8)),
        "outputs": rng.normal(size=(3, 5, 2)),
    }
    if members:
        arrays["members"] = rng.normal(size=(2, 3, 5, 8))
    return header, arrays


@pytest.mark.parametrize("encoding", [twin_pb2.ARRAY_ENCODING_RAW, twin_pb2.ARRAY_ENCODING_PACKED])
@pytest.mark.parametrize("members", [False, True])
def test_predict_responses_on_the_wire(encoding, members):
    header, arrays = _response(encoding, members)
    data = serialize_predict_response(header, arrays, encoding)
    # The fast bytes are an ordinary PredictResponse ...
    msg = twin_pb2.PredictResponse.FromString(data)
    assert msg.model.version == 3 and list(msg.output_names) == ["superheat", "power"] and msg.dt_s == 10.0
    assert msg.HasField("members") == members
    for name, a in arrays.items():
        assert decode_array(getattr(msg, name), name).tobytes() == a.tobytes()
    # ... and the fast parser reads them, and what protobuf itself writes, alike.
    slow = header.__deepcopy__()
    for name, a in arrays.items():
        encode_array(a, encoding, getattr(slow, name))
    for wire in (data, slow.SerializeToString()):
        p = Prediction.from_wire(wire)
        assert (p.model.name, p.model.version, p.model.alias, p.n_members, p.dt) == ("cell", 3, "champion", 2, 10.0)
        assert p.mean.tobytes() == arrays["mean"].tobytes() and p.spread.tobytes() == arrays["spread"].tobytes()
        assert p.outputs["power"].tolist() == arrays["outputs"][..., 1].tolist()
        assert (p.members is not None) == members
        if members:
            assert p.members.tobytes() == arrays["members"].tobytes()


def test_inconsistent_predict_responses_are_refused():
    header, arrays = _response(twin_pb2.ARRAY_ENCODING_RAW, False)
    data = serialize_predict_response(header, {**arrays, "mean": arrays["mean"][:, :, :3]})
    assert Prediction.from_wire(data).mean.shape == (3, 5, 3)  # consistent on its own
    short = serialize_predict_response(header, {"mean": arrays["mean"], "spread": arrays["spread"]})
    lean = Prediction.from_wire(short)  # a field mask may leave arrays out: they are absent, not refused
    assert lean.outputs == {} and lean.members is None and lean.mean.tobytes() == arrays["mean"].tobytes()
    msg = twin_pb2.PredictResponse.FromString(serialize_predict_response(header, arrays))
    msg.mean.raw = msg.mean.raw[:-8]
    with pytest.raises(ValueError, match="needs"):
        Prediction.from_wire(msg.SerializeToString())


def test_unusual_but_legal_wire_bytes_go_to_protobuf():
    header, arrays = _response(twin_pb2.ARRAY_ENCODING_RAW, False)
    mean = np.arange(8.0).reshape(1, 1, 8)
    unpacked = b"".join(b"\x11" + v.tobytes() for v in mean.ravel())  # `values` as 8 unpacked doubles
    body = b"\x0a\x03\x01\x01\x08" + unpacked  # shape [1, 1, 8], then the values
    data = serialize_predict_response(header, {k: v[:1, :1] for k, v in arrays.items() if k != "mean"})
    p = Prediction.from_wire(data + b"\x12" + bytes([len(body)]) + body)
    assert p.mean.tolist() == mean.tolist() and p.spread.shape == (1, 1, 8)
