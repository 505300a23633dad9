"""Model files: bit-exact round trips, and refusal of inconsistent or hostile files with clear errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from identification.modelfile import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_WEIGHTS_BYTES,
    WEIGHTS_NAME,
    ModelFileError,
    dataset_checksum,
    load_model,
    load_model_bytes,
    model_to_bytes,
    read_manifest,
    read_model_files,
    save_model,
)
from identification.surrogate import Surrogate
from plant.signals import INPUTS, STATES

LOW = np.array([s.low for s in (*STATES, *INPUTS)])
HIGH = np.array([s.high for s in (*STATES, *INPUTS)])

# name -> (random_surrogate arguments, kind). Masked weights are signed zeros (negative ones must survive
# bit-exactly); the normalisation is a box around the signals' typical ranges with small centre noise.
MODELS = {
    "dense": ({"seed": 1, "m": 3}, "dense"),
    "sparse": ({"seed": 2, "m": 3, "density": 0.2}, "sparse"),
    "inputskip": ({"seed": 3, "m": 2, "skip": True}, "inputskip"),
    "hybrid": ({"seed": 4, "m": 2, "density": 0.5, "prior": "wrong_liquidus"}, "hybrid"),
    "blocks": ({"seed": 5, "m": 2, "skip": True, "blocks": 8, "hidden": (16, 16, 16, 16)}, "structured"),
}
PROVENANCE = {"seed": np.int64(7), "n_traj": 10, "n_steps": 5000, "excitation": "aprbs", "dataset_sha256": "ab" * 32}


@pytest.fixture(scope="session")
def model(random_surrogate):
    """``model(name)``: the surrogate of :data:`MODELS` ``name``."""

    def build(name: str) -> Surrogate:
        return random_surrogate(**MODELS[name][0], negative_zeros=True, norm="random", center_noise=1e-3)

    return build


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, model) -> Path:
    """A saved exactly sparse model (the template every corrupted copy starts from)."""
    path = tmp_path_factory.mktemp("models") / "sparse"
    save_model(path, model("sparse"), kind="sparse", provenance=PROVENANCE)
    return path


@pytest.fixture
def copy(saved: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(saved, out)
    return out


def _manifest(d: Path) -> dict:
    return json.loads((d / MANIFEST_NAME).read_text())


def _write_manifest(d: Path, doc: dict) -> None:
    (d / MANIFEST_NAME).write_text(json.dumps(doc))


def _rewrite_weights(d: Path, blob: bytes) -> None:
    """Replace the weights with ``blob`` and make the manifest's checksum agree (to reach the later checks)."""
    (d / WEIGHTS_NAME).write_bytes(blob)
    doc = _manifest(d)
    doc["weights"]["sha256"] = hashlib.sha256(blob).hexdigest()
    doc["weights"]["bytes"] = len(blob)
    _write_manifest(d, doc)


def _tensors(d: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in safetensors.numpy.load((d / WEIGHTS_NAME).read_bytes()).items()}


def _refused(d: Path, *fragments: str) -> ModelFileError:
    """``load_model(d)`` refuses with all ``fragments`` in the message, and so does ``load_model_bytes`` of the
    two files (same problem, the file named without its directory)."""
    with pytest.raises(ModelFileError) as info:
        load_model(d)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    for frag in fragments:
        assert frag in msg, msg
    files = (d / MANIFEST_NAME, d / WEIGHTS_NAME)
    if all(f.is_file() for f in files) and (d / WEIGHTS_NAME).stat().st_size <= MAX_WEIGHTS_BYTES:
        with pytest.raises(ModelFileError) as from_bytes:
            load_model_bytes(*(f.read_bytes() for f in files))
        assert from_bytes.value.problem == info.value.problem
        assert from_bytes.value.path == Path(info.value.path).name
    return info.value


# ---------------------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_is_bit_exact(name: str, tmp_path: Path, model):
    kind = MODELS[name][1]
    model = model(name)
    metrics = {"nrmse": np.array([0.1, 0.2]), "median_5000dT": float("nan"), "diverged": np.int32(3)}
    out = save_model(tmp_path / name, model, kind=kind, provenance=PROVENANCE, metrics=metrics)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, WEIGHTS_NAME]  # no temporary files left
    loaded = load_model(out)
    s = loaded.surrogate
    assert loaded.kind == kind and s.prior == model.prior and loaded.path == out
    assert s.weights.architecture == model.weights.architecture
    for a, b in zip(
        (*model.weights.weights, *model.weights.biases), (*s.weights.weights, *s.weights.biases), strict=True
    ):
        assert a.dtype == b.dtype == np.float64 and a.shape == b.shape and a.tobytes() == b.tobytes()
    if model.weights.masks is None:
        assert s.weights.masks is None
    else:
        for a, b in zip(model.weights.masks, s.weights.masks, strict=True):
            np.testing.assert_array_equal(a, b)
    for field in ("feature_mean", "feature_std", "target_mean", "target_std"):
        assert getattr(model.normalization, field).tobytes() == getattr(s.normalization, field).tobytes()
    assert s.normalization.dt == model.normalization.dt
    # The loaded model computes exactly what the saved one did.
    rng = np.random.default_rng(0)
    x, u = rng.uniform(LOW[:8], HIGH[:8], (4, 8)), rng.uniform(LOW[8:], HIGH[8:], (4, 5))
    assert s.derivative(x, u).tobytes() == model.derivative(x, u).tobytes()
    # Manifest: provenance and metrics as JSON data (NaN -> null), versions, checksums, counts.
    man = loaded.manifest
    assert loaded.provenance == {**PROVENANCE, "seed": 7}
    assert loaded.metrics == {"nrmse": [0.1, 0.2], "median_5000dT": None, "diverged": 3}
    assert man["weights"]["sha256"] == hashlib.sha256((out / WEIGHTS_NAME).read_bytes()).hexdigest()
    assert set(man["versions"]) >= {"python", "numpy", "torch", "casadi", "safetensors"}
    assert man["n_members"] == model.n_members and man["masks"] == (model.weights.masks is not None)
    assert man["nonzero_weights"]["total"] == int(model.weights.nonzero().sum())


def test_bytes_are_the_files(tmp_path: Path, model):
    """model_to_bytes gives the files save_model writes; load_model_bytes reads them as load_model does."""
    sparse = model("sparse")
    manifest, weights = model_to_bytes(sparse, kind="sparse", provenance=PROVENANCE, metrics={"score": 0.5})
    out = save_model(tmp_path / "m", sparse, kind="sparse", provenance=PROVENANCE, metrics={"score": 0.5})
    assert (out / WEIGHTS_NAME).read_bytes() == weights
    on_disk, in_memory = json.loads((out / MANIFEST_NAME).read_bytes()), json.loads(manifest)
    assert on_disk.pop("created") and in_memory.pop("created")  # the second of writing
    assert on_disk == in_memory
    loaded, from_dir = load_model_bytes(manifest, weights), load_model(out)
    assert loaded.path is None and from_dir.path == out
    assert loaded.kind == "sparse" and loaded.metrics == {"score": 0.5}
    for a, b in zip(loaded.surrogate.weights.weights, from_dir.surrogate.weights.weights, strict=True):
        assert a.tobytes() == b.tobytes()
    assert load_model_bytes(bytearray(manifest), memoryview(weights)).manifest == loaded.manifest
    with pytest.raises(ValueError, match="manifest must be bytes, got str"):
        load_model_bytes(manifest.decode(), weights)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights must be bytes, got NoneType"):
        load_model_bytes(manifest, None)  # type: ignore[arg-type]
    with pytest.raises(ModelFileError, match=f"{WEIGHTS_NAME}: is {MAX_WEIGHTS_BYTES + 1} bytes"):
        load_model_bytes(manifest, bytes(MAX_WEIGHTS_BYTES + 1))
    with pytest.raises(ValueError, match="unknown kind"):
        model_to_bytes(sparse, kind="bogus", provenance={})


def test_exact_zeros_survive(tmp_path: Path, model):
    model = model("sparse")
    loaded = load_model(save_model(tmp_path / "m", model, kind="sparse", provenance={})).surrogate.weights
    for w0, w1, mk in zip(model.weights.weights, loaded.weights, loaded.masks, strict=True):
        assert np.all(w1[~mk] == 0) and np.count_nonzero(w1) == np.count_nonzero(w0) == np.count_nonzero(mk)
        np.testing.assert_array_equal(np.signbit(w1), np.signbit(w0))  # -0.0 stays -0.0
    assert np.count_nonzero(np.signbit(loaded.weights[0]) & (loaded.weights[0] == 0)) > 0
    tensors = _tensors(tmp_path / "m")
    assert tensors["layer0.mask"].dtype == np.uint8 and set(np.unique(tensors["layer0.mask"])) == {0, 1}


def test_save_refuses_to_overwrite_unless_asked(tmp_path: Path, model):
    dense = model("dense")
    target = tmp_path / "m"
    save_model(target, dense, kind="dense", provenance={})
    with pytest.raises(FileExistsError):
        save_model(target, dense, kind="dense", provenance={})
    save_model(target / MANIFEST_NAME, model("sparse"), kind="sparse", provenance={}, overwrite=True)
    assert load_model(target).kind == "sparse" and sorted(p.name for p in target.iterdir()) == [
        MANIFEST_NAME,
        WEIGHTS_NAME,
    ]


def test_save_validates_its_arguments(tmp_path: Path, model):
    model = model("dense")
    with pytest.raises(ValueError, match="unknown kind"):
        save_model(tmp_path / "a", model, kind="bogus", provenance={})
    with pytest.raises(ValueError, match=r"provenance\.where"):
        save_model(tmp_path / "b", model, kind="dense", provenance={"where": object()})
    with pytest.raises(ValueError, match="provenance must be a dict"):
        save_model(tmp_path / "c", model, kind="dense", provenance=[1])  # type: ignore[arg-type]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / MANIFEST_NAME).exists()


def test_dataset_checksum_is_stable_and_sensitive():
    class Data:
        def __init__(self, x: np.ndarray) -> None:
            self.x, self.u, self.fault_step, self.dt = x, np.ones((2, 3, 5)), np.array([-1, 2]), 10.0

    x = np.arange(2 * 4 * 8, dtype=float).reshape(2, 4, 8)
    a, b = dataset_checksum(Data(x)), dataset_checksum(Data(x.copy()))
    x2 = x.copy()
    x2[1, 2, 3] += 1e-12
    assert a == b and len(a) == 64 and dataset_checksum(Data(x2)) != a


# ---------------------------------------------------------------------------------------------------------------
# Refusals


def test_missing_files(copy: Path, tmp_path: Path):
    _refused(tmp_path / "nowhere", "not a model directory")
    (copy / WEIGHTS_NAME).unlink()
    _refused(copy, WEIGHTS_NAME, "missing")
    (copy / MANIFEST_NAME).unlink()
    _refused(copy, MANIFEST_NAME, "missing")


def test_reading_the_files_checks_the_manifest_before_the_weights(copy: Path):
    """read_model_files gives the two files' bytes; a broken manifest is refused before the weights are read, so
    its error comes first whatever the weights are (missing, oversized, not a file)."""
    manifest, weights = read_model_files(copy / MANIFEST_NAME)
    assert (manifest, weights) == ((copy / MANIFEST_NAME).read_bytes(), (copy / WEIGHTS_NAME).read_bytes())
    assert read_manifest(copy) == load_model(copy).manifest == json.loads(manifest)
    (copy / WEIGHTS_NAME).unlink()
    (copy / WEIGHTS_NAME).mkdir()
    with pytest.raises(ModelFileError, match=f"{WEIGHTS_NAME}: is not a regular file"):
        read_model_files(copy)
    assert read_manifest(copy)["kind"] == "sparse"  # the manifest alone never looks at the weights
    (copy / WEIGHTS_NAME).rmdir()
    with open(copy / WEIGHTS_NAME, "wb") as f:  # sparse: large on paper
        f.truncate(MAX_WEIGHTS_BYTES + 1)
    with pytest.raises(ModelFileError, match=f"{WEIGHTS_NAME}: is {MAX_WEIGHTS_BYTES + 1} bytes; at most"):
        read_model_files(copy)
    doc = _manifest(copy)
    doc["kind"] = "bogus"
    _write_manifest(copy, doc)
    for read in (read_model_files, read_manifest, load_model):
        with pytest.raises(ModelFileError, match=f"{MANIFEST_NAME}: unknown kind 'bogus'"):
            read(copy)
    (copy / WEIGHTS_NAME).unlink()
    _refused(copy, MANIFEST_NAME, "unknown kind 'bogus'")
    with pytest.raises(ModelFileError, match="not a model directory"):
        read_model_files(copy / "nowhere")


def test_pickle_renamed_to_safetensors_is_refused_without_unpickling(copy: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []

    def spy(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise RuntimeError("something tried to unpickle")

    blob = pickle.dumps({"layer0.weight": [1.0, 2.0], "evil": "payload"})
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, spy)
    (copy / WEIGHTS_NAME).write_bytes(blob)
    _refused(copy, WEIGHTS_NAME, "not a safetensors file", "pickle")
    _rewrite_weights(copy, blob)  # even with a matching checksum
    _refused(copy, WEIGHTS_NAME, "not a safetensors file", "pickle")
    assert not calls


def test_truncated_weights(copy: Path):
    blob = (copy / WEIGHTS_NAME).read_bytes()
    (copy / WEIGHTS_NAME).write_bytes(blob[:-100])
    _refused(copy, WEIGHTS_NAME, "checksum mismatch")
    _rewrite_weights(copy, blob[:-100])
    _refused(copy, WEIGHTS_NAME, "not a valid safetensors file")
    _rewrite_weights(copy, blob[:6])
    _refused(copy, WEIGHTS_NAME, "not a safetensors file")


def test_checksum_mismatch(copy: Path):
    blob = bytearray((copy / WEIGHTS_NAME).read_bytes())
    blob[-3] ^= 0x01  # a weight's bits change; the file stays valid safetensors
    (copy / WEIGHTS_NAME).write_bytes(bytes(blob))
    _refused(copy, WEIGHTS_NAME, "checksum mismatch", "do not belong together")


def test_wrong_shape(copy: Path):
    t = _tensors(copy)
    t["layer1.weight"] = t["layer1.weight"][:, :19]
    t["layer1.mask"] = t["layer1.mask"][:, :19]
    _rewrite_weights(copy, safetensors.numpy.save(t))
    _refused(copy, "layer1.weight", "shape (3, 19, 20)", "(3, 20, 20)")


def test_missing_and_extra_tensors(copy: Path):
    t = _tensors(copy)
    del t["layer2.bias"]
    t["layer9.weight"] = np.zeros((1, 1))
    _rewrite_weights(copy, safetensors.numpy.save(t))
    _refused(copy, "missing ['layer2.bias']", "unexpected ['layer9.weight']")


def test_wrong_dtype(copy: Path):
    t = _tensors(copy)
    t["layer0.bias"] = t["layer0.bias"].astype(np.float32)
    _rewrite_weights(copy, safetensors.numpy.save(t))
    _refused(copy, "layer0.bias", "dtype float32", "float64")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights(copy: Path, value: float):
    t = _tensors(copy)
    t["layer3.weight"][1, 0, np.flatnonzero(t["layer3.mask"][1, 0])[0]] = value
    _rewrite_weights(copy, safetensors.numpy.save(t))
    _refused(copy, "layer 3", "NaN or infinite")


def test_bad_masks(copy: Path):
    t = _tensors(copy)
    t["layer0.mask"][0, 0, 0] = 2
    _rewrite_weights(copy, safetensors.numpy.save(t))
    _refused(copy, "layer0.mask", "other than 0 and 1")
    t = _tensors(copy)
    t["layer0.mask"][0, 0, 0] = 1
    i = np.argwhere(t["layer2.mask"] == 0)[0]
    t["layer2.weight"][tuple(i)] = 0.5  # a live weight under a zero mask
    _rewrite_weights(copy, safetensors.numpy.save(t))
    _refused(copy, "layer 2", "non-zero weights where its mask is 0")


def test_manifest_not_json(copy: Path):
    (copy / MANIFEST_NAME).write_text("{not json")
    _refused(copy, MANIFEST_NAME, "not valid JSON")
    (copy / MANIFEST_NAME).write_text("[1, 2]")
    _refused(copy, MANIFEST_NAME, "JSON object")
    (copy / MANIFEST_NAME).write_bytes(b"\xff\xfe{}")
    _refused(copy, MANIFEST_NAME, "UTF-8")
    (copy / MANIFEST_NAME).write_text('{"format": "alutwin-surrogate", "format": "other"}')
    _refused(copy, "not valid JSON", "duplicate key")
    (copy / MANIFEST_NAME).write_text("[" * 100_000 + "]" * 100_000)
    _refused(copy, "not valid JSON")


def test_manifest_nan_constant(copy: Path):
    text = (copy / MANIFEST_NAME).read_text().replace('"dt": 10.0', '"dt": NaN')
    (copy / MANIFEST_NAME).write_text(text)
    _refused(copy, "not valid JSON", "NaN")


def test_unknown_format_version(copy: Path):
    doc = _manifest(copy)
    doc["format_version"] = 3
    _write_manifest(copy, doc)
    _refused(copy, "unknown format_version 3", "supports [1, 2]")
    doc["format_version"], doc["format"] = 2, "pytorch"
    _write_manifest(copy, doc)
    _refused(copy, "format must be")


def test_the_training_envelope_round_trips_and_version_1_files_still_load(copy: Path, model):
    from identification.data import Envelope

    env = Envelope(np.arange(8.0), np.arange(8.0) + 10, np.zeros(5), np.ones(5))
    sur = dataclasses.replace(model("sparse"), envelope=env)
    out = copy.parent / "with_envelope"
    save_model(out, sur, kind="sparse", provenance=PROVENANCE)
    doc = _manifest(out)
    assert doc["format_version"] == 2 and doc["envelope"] == env.as_dict()
    back = load_model(out).surrogate.envelope
    assert back is not None and np.array_equal(back.x_high, env.x_high) and np.array_equal(back.u_low, env.u_low)
    old = _manifest(copy)  # a version-1 file: no envelope key at all
    old["format_version"] = 1
    del old["envelope"]
    _write_manifest(copy, old)
    assert load_model(copy).surrogate.envelope is None
    old["envelope"] = None  # version 1 has no such key
    _write_manifest(copy, old)
    _refused(copy, "unexpected ['envelope']")


@pytest.mark.parametrize(
    ("envelope", "problem"),
    [
        ({"x_low": [0] * 8, "x_high": [1] * 8, "u_low": [0] * 5}, "envelope must be null or an object"),
        ({"x_low": [0] * 7, "x_high": [1] * 8, "u_low": [0] * 5, "u_high": [1] * 5}, "envelope.x_low must be"),
        ({"x_low": [2] * 8, "x_high": [1] * 8, "u_low": [0] * 5, "u_high": [1] * 5}, "must not exceed"),
        ({"x_low": ["a"] * 8, "x_high": [1] * 8, "u_low": [0] * 5, "u_high": [1] * 5}, "envelope.x_low must be"),
    ],
)
def test_a_malformed_envelope_is_refused(copy: Path, envelope: dict, problem: str):
    doc = _manifest(copy)
    doc["envelope"] = envelope
    _write_manifest(copy, doc)
    _refused(copy, problem)


def test_oversized_files(copy: Path):
    doc = _manifest(copy)
    doc["provenance"]["note"] = "x" * MAX_MANIFEST_BYTES
    _write_manifest(copy, doc)
    _refused(copy, MANIFEST_NAME, f"at most {MAX_MANIFEST_BYTES}")
    doc["provenance"].pop("note")
    _write_manifest(copy, doc)
    with open(copy / WEIGHTS_NAME, "r+b") as f:  # a sparse file: large on paper, nothing written
        f.truncate(MAX_WEIGHTS_BYTES + 1)
    _refused(copy, WEIGHTS_NAME, f"at most {MAX_WEIGHTS_BYTES}")


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda d: d.update(kind="bogus"), "unknown kind 'bogus'"),
        (lambda d: d.update(prior="right_physics"), "unknown prior 'right_physics'"),
        (lambda d: d.update(n_members="3"), "n_members must be an integer"),
        (lambda d: d.update(n_members=65), "n_members must be an integer in [1, 64]"),
        (lambda d: d.update(masks="yes"), "masks must be true or false"),
        (lambda d: d.update(extra=1), "unexpected ['extra']"),
        (lambda d: d.pop("provenance"), "missing ['provenance']"),
        (lambda d: d["architecture"].update(hidden=[20] * 9), "at most 8 layer widths"),
        (lambda d: d["architecture"].update(hidden=[20, 20, 300, 20]), "architecture.hidden[2] must be an integer"),
        (lambda d: d["architecture"].update(n_in=13.0), "architecture.n_in must be an integer"),
        (lambda d: d["architecture"].update(skip=1), "architecture.skip"),
        (lambda d: d["architecture"].update(hidden=[20, 20, 20]), "weights.tensors must list"),
        (lambda d: d["normalization"].update(feature_std=[1.0] * 12), "normalization.feature_std must be a list of 13"),
        (lambda d: d["normalization"].update(target_std=[-1.0] * 8), "must be positive"),
        (lambda d: d["normalization"].update(dt="10"), "normalization.dt must be a number"),
        (lambda d: d["weights"].update(file="../../etc/passwd"), "weights.file must be 'weights.safetensors'"),
        (lambda d: d["weights"].update(sha256="XYZ"), "weights.sha256"),
        (lambda d: d["nonzero_weights"].update(total=1), "nonzero_weights do not match"),
        (lambda d: d.update(metrics=[1]), "metrics must be an object or null"),
    ],
)
def test_inconsistent_manifest(copy: Path, edit, fragment: str):
    doc = _manifest(copy)
    edit(doc)
    _write_manifest(copy, doc)
    _refused(copy, MANIFEST_NAME, fragment)


def test_weights_of_another_model_are_refused(copy: Path, tmp_path: Path, model):
    other = save_model(tmp_path / "other", model("dense"), kind="dense", provenance={})
    shutil.copy(other / WEIGHTS_NAME, copy / WEIGHTS_NAME)
    _refused(copy, "checksum mismatch")
