"""Data sets on disk: generation, the safetensors format and its validation, and ``alutwin simulate``."""

from __future__ import annotations

import json
import pickle
import struct
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from tqdm import tqdm

import alutwin.cli
from plant.datasets import (
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_KEY,
    DatasetError,
    DatasetMeta,
    generate,
    load_dataset,
    save_dataset,
    tensor_checksum,
)
from plant.datasets.generation import _simulate_chunked
from plant.domain import Fault
from plant.excitation import constant, sample_initial_states
from plant.params import DEFAULT_PARAMS, SPEC_VERSION
from plant.signals import INPUTS, STATES, U, X
from plant.simulator import MeasurementNoise, Trajectories, simulate


@pytest.fixture(scope="module")
def long_set() -> tuple[Trajectories, DatasetMeta]:
    """3 aprbs trajectories of 2500 steps: long enough for the extra alumina and AlF3 impulses."""
    return generate(3, 3, 2500, progress=False, engine="numpy")


@pytest.fixture(scope="module")
def noisy_set() -> tuple[Trajectories, DatasetMeta]:
    return generate(4, 2, 120, noise=MeasurementNoise(), progress=False, engine="numpy")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, noisy_set) -> Path:
    path = tmp_path_factory.mktemp("ds") / "set.safetensors"
    save_dataset(path, *noisy_set)
    return path


def _tensors_and_meta(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    return safetensors.numpy.load(blob), json.loads(header["__metadata__"][METADATA_KEY])


def _write(path: Path, tensors: dict[str, np.ndarray], meta: dict, fix_checksum: bool = True) -> Path:
    """A file in the format with arbitrary tensors; the checksum is recomputed unless told otherwise."""
    meta = dict(meta)
    if fix_checksum:
        meta["sha256"] = tensor_checksum(tensors)
    safetensors.numpy.save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    return path


# ---------------------------------------------------------------- round trip and determinism


def test_round_trip_is_bit_exact_with_metadata(saved: Path, noisy_set) -> None:
    traj, meta = noisy_set
    ds = load_dataset(saved)
    for name in ("x", "u", "y", "fault_step", "fault_code"):
        got, want = getattr(ds, name), getattr(traj, name)
        assert got.dtype == want.dtype, name
        assert got.tobytes() == want.tobytes(), name
    assert ds.meta == meta
    assert ds.meta.format == FORMAT_NAME and ds.meta.format_version == FORMAT_VERSION
    assert ds.meta.spec_version == SPEC_VERSION
    assert ds.meta.state_units == tuple(s.unit for s in STATES)
    assert ds.meta.input_names == tuple(s.name for s in INPUTS)
    assert ds.meta.noise_std == MeasurementNoise().std
    assert ds.meta.sha256 == tensor_checksum({k: getattr(traj, k) for k in ("x", "u", "y", "fault_step", "fault_code")})
    assert {"python", "numpy", "safetensors", "alutwin"} <= set(ds.meta.versions)
    assert (ds.n_traj, ds.n_steps, ds.dt) == (2, 120, 10.0)
    with pytest.raises(ValueError, match="read-only"):
        ds.x[0, 0, 0] = 1.0
    tr = ds.trajectories()
    assert isinstance(tr, Trajectories) and tr.x is ds.x and tr.dt == 10.0


def test_save_is_atomic_and_leaves_no_temporary(tmp_path: Path, noisy_set) -> None:
    traj, meta = noisy_set
    path = tmp_path / "a.safetensors"
    save_dataset(path, traj, meta)
    bad = Trajectories(traj.x.copy(), traj.u, traj.fault_step, traj.fault_code, traj.y, traj.dt)
    bad.x[0, 3, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        save_dataset(path, bad, replace(meta, sha256=""))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]
    assert load_dataset(path).meta == meta  # the old file is intact
    with pytest.raises(ValueError, match="sha256 does not match"):
        save_dataset(tmp_path / "b.safetensors", bad, meta)


def test_same_seed_is_bit_identical_and_seeds_and_splits_differ() -> None:
    a, ma = generate(7, 2, 60, progress=False, engine="numpy")
    b, mb = generate(7, 2, 60, progress=False, engine="numpy")
    c, _ = generate(8, 2, 60, progress=False, engine="numpy")
    t, mt = generate(7, 2, 60, progress=False, engine="numpy", split="test")
    assert a.x.tobytes() == b.x.tobytes() and a.u.tobytes() == b.u.tobytes()
    assert ma.sha256 == mb.sha256
    assert not np.array_equal(a.x[:, 0], c.x[:, 0])
    assert not np.array_equal(a.x[:, 0], t.x[:, 0])
    assert mt.split == "test" and mt.sha256 != ma.sha256
    # the test set of seed s is not the train set of seed s + 1
    assert not np.array_equal(t.x[:, 0], c.x[:, 0])


def test_noise_changes_only_y(noisy_set) -> None:
    traj, _ = noisy_set
    clean, _ = generate(4, 2, 120, progress=False, engine="numpy")
    assert np.array_equal(traj.x, clean.x) and clean.y is None
    resid = traj.y - traj.x
    assert np.all(resid[..., [i for i in range(8) if i != X.T_BATH]] == 0.0)
    assert 1.0 < np.std(resid[..., X.T_BATH]) < 3.0


def test_chunked_simulation_equals_one_call_across_faults() -> None:
    rng = np.random.default_rng(11)
    x0 = sample_initial_states(rng, 3)
    x0[:2, X.M_LEDGE] = [700.0, 1500.0]  # thin ledges under a hot bath melt away (at steps 18 and 100)
    x0[:2, X.T_BATH] = 1010.0
    exo = constant(3, 300, current=155_000.0, acd=0.06)
    ref = simulate(x0, exo, engine="numpy")
    assert ref.fault_code[0] == Fault.LEDGE_MELTED and ref.fault_step[2] == -1
    assert ref.fault_step[0] != ref.fault_step[1]
    with tqdm(disable=True) as bar:
        xs, us, fs, fc = _simulate_chunked(x0, exo, 10.0, "numpy", bar, traj_chunk=2, time_chunk=7)
    assert xs.tobytes() == ref.x.tobytes() and us.tobytes() == ref.u.tobytes()
    assert np.array_equal(fs, ref.fault_step) and np.array_equal(fc, ref.fault_code)


def test_mass_bookkeeping_of_a_generated_set(long_set) -> None:
    """Linear mass balances are exact under RK4 with zero-order hold: Δm = Σ rate·dt per trajectory."""
    traj, meta = long_set
    p, dt = DEFAULT_PARAMS, meta.dt
    u = traj.u
    assert np.any(u[..., U.FEED_AL2O3] > 0) and np.any(u[..., U.FEED_ALF3] > 0) and np.any(u[..., U.TAPPING] > 0)
    checks = (
        (X.M_AL2O3, u[..., U.FEED_AL2O3] - p.k3 * u[..., U.CURRENT]),
        (X.M_ALF3, u[..., U.FEED_ALF3] - p.k4 * u[..., U.FEED_AL2O3]),
        (X.M_METAL, p.k6 * u[..., U.CURRENT] - u[..., U.TAPPING]),
    )
    for b in range(traj.n_traj):
        end = traj.n_steps if traj.fault_step[b] < 0 else int(traj.fault_step[b])  # held states after a fault
        for i, rate in checks:
            change = traj.x[b, end, i] - traj.x[b, 0, i]
            booked = np.sum(rate[b, :end]) * dt
            assert abs(change - booked) <= 1e-9 * np.max(np.abs(traj.x[b, :, i])), (b, i, change, booked)


def test_generate_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_traj"):
        generate(0, 0, 10, progress=False)
    with pytest.raises(ValueError, match="seed"):
        generate(-1, 1, 10, progress=False)
    with pytest.raises(ValueError, match=r"unknown excitation .sine.*aprbs"):
        generate(0, 1, 10, excitation="sine", progress=False)
    with pytest.raises(ValueError, match="unknown engine"):
        generate(0, 1, 10, engine="fortran", progress=False)
    with pytest.raises(ValueError, match="unknown split"):
        generate(0, 1, 10, split="dev", progress=False)


# ---------------------------------------------------------------- refused files


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        load_dataset(path)


class _Trap:
    """Unpickling this would create a file: proof that the loader never unpickles."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


def test_pickle_renamed_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    sentinel = tmp_path / "unpickled"
    path = tmp_path / "train.safetensors"
    path.write_bytes(pickle.dumps({"x": np.zeros((2, 3)), "trap": _Trap(sentinel)}))
    with pytest.raises(DatasetError, match=r"train\.safetensors: not a safetensors data set.*pickle"):
        load_dataset(path)
    assert not sentinel.exists()


@pytest.mark.parametrize("content", [b"", b"abc", b"hello world, this is not a data set" * 10])
def test_garbage_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "g.safetensors"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=r"g\.safetensors: not a safetensors data set"):
        load_dataset(path)


def test_truncated_file(tmp_path: Path, saved: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(saved.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"t\.safetensors: truncated file"):
        load_dataset(path)


def test_plain_safetensors_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "p.safetensors"
    safetensors.numpy.save_file({"x": np.zeros((1, 2, 8))}, str(path))
    with pytest.raises(DatasetError, match="not an alutwin data set"):
        load_dataset(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.update(u=t["u"][:, :-1]), r"tensor 'u' must have shape \(N, T, 5\)"),
        (lambda t: t.update(x=t["x"][..., :7].copy()), r"tensor 'x' must have shape \(N, T\+1, 8\)"),
        (lambda t: t.update(y=t["y"][:1].copy()), "tensor 'y' must have the shape of x"),
        (lambda t: t.update(fault_step=t["fault_step"][:1].copy()), r"'fault_step' must have shape \(N,\)"),
        (lambda t: t.pop("fault_code"), r"missing tensor\(s\) \['fault_code'\]"),
        (lambda t: t.update(extra=np.zeros(3)), r"unexpected tensor\(s\) \['extra'\]"),
        (lambda t: t.update(x=t["x"].astype(np.float32)), "tensor 'x' has dtype F32"),
        (
            lambda t: t["x"].__setitem__((1, 5, 5), np.nan),
            r"'x' holds non-finite values \(first at index \(1, 5, 5\)\)",
        ),
        (lambda t: t["u"].__setitem__((0, 2, 1), np.inf), "'u' holds non-finite values"),
        (lambda t: t.update(fault_step=np.array([3, -1])), "fault_step and fault_code disagree"),
        (lambda t: t.update(fault_code=np.array([9, 0], dtype=np.int8)), "outside the Fault codes"),
    ],
)
def test_bad_tensors_are_refused(tmp_path: Path, saved: Path, edit, message: str) -> None:
    tensors, meta = _tensors_and_meta(saved)
    tensors = {k: v.copy() for k, v in tensors.items()}
    edit(tensors)
    path = _write(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(DatasetError, match=r"bad\.safetensors: .*" + message):
        load_dataset(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 99}, r"unknown format_version 99; this alutwin reads versions \[1\]"),
        ({"format": "other.format"}, "format is 'other.format'"),
        ({"n_steps": 119}, "metadata says 2 x 119 steps but x holds 2 x 120"),
        ({"state_names": [s.name for s in STATES][::-1]}, "metadata state_names .* do not match plant.signals"),
        ({"input_units": ["kg/s", "kA", "kg/s", "kg/s", "m"]}, "metadata input_units .* do not match"),
        ({"spec_version": "plant.md/0"}, "data were made for spec 'plant.md/0'"),
        ({"noise_std": None}, "'y' must be present exactly when metadata 'noise_std' is set"),
        ({"dt": -10.0}, "'dt' must be a positive number"),
        ({"seed": "zero"}, "'seed' must be a non-negative integer"),
        ({"surprise": 1}, r"unknown keys \['surprise'\]"),
    ],
)
def test_bad_metadata_is_refused(tmp_path: Path, saved: Path, change: dict, message: str) -> None:
    tensors, meta = _tensors_and_meta(saved)
    path = _write(tmp_path / "meta.safetensors", tensors, {**meta, **change})
    with pytest.raises(DatasetError, match=r"meta\.safetensors: .*" + message):
        load_dataset(path)


def test_missing_metadata_key_is_refused(tmp_path: Path, saved: Path) -> None:
    tensors, meta = _tensors_and_meta(saved)
    del meta["excitation"]
    path = _write(tmp_path / "m.safetensors", tensors, meta)
    with pytest.raises(DatasetError, match=r"metadata lacks the keys \['excitation'\]"):
        load_dataset(path)


def test_tampered_value_fails_the_checksum(tmp_path: Path, saved: Path) -> None:
    blob = bytearray(saved.read_bytes())
    (n,) = struct.unpack("<Q", blob[:8])
    begin, _ = json.loads(blob[8 : 8 + n])["x"]["data_offsets"]
    at = 8 + n + begin + 8 * 17  # one float64 of x, header untouched
    (v,) = struct.unpack("<d", blob[at : at + 8])
    blob[at : at + 8] = struct.pack("<d", v + 1.0)
    path = tmp_path / "tampered.safetensors"
    path.write_bytes(bytes(blob))
    with pytest.raises(DatasetError, match=r"tampered\.safetensors: checksum mismatch"):
        load_dataset(path)


def test_wrong_checksum_in_metadata(tmp_path: Path, saved: Path) -> None:
    tensors, meta = _tensors_and_meta(saved)
    path = _write(tmp_path / "c.safetensors", tensors, {**meta, "sha256": "0" * 64}, fix_checksum=False)
    with pytest.raises(DatasetError, match="checksum mismatch"):
        load_dataset(path)


def test_metadata_json_round_trip(noisy_set) -> None:
    _, meta = noisy_set
    assert DatasetMeta.from_json(meta.to_json()) == meta
    assert json.loads(meta.to_json())["versions"] == dict(meta.versions)
    assert set(json.loads(meta.to_json())) == set(asdict(meta))


# ---------------------------------------------------------------- alutwin simulate


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch):
    """``alutwin.cli.main`` with only the ``simulate`` entry point, so other packages' commands cannot interfere."""
    real = alutwin.cli.entry_points

    def only_simulate(group: str):
        return [ep for ep in real(group=group) if ep.name == "simulate"]

    monkeypatch.setattr(alutwin.cli, "entry_points", only_simulate)
    return alutwin.cli.main


def test_cli_simulate_writes_loadable_sets_and_refuses_to_overwrite(tmp_path: Path, cli, capsys) -> None:
    out = tmp_path / "data"
    args = ["simulate", "--out", str(out), "--train", "2", "--test", "3", "--steps", "40", "--seed", "5"]
    assert cli([*args, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "test" in printed and "faults: none" in printed and "total" in printed
    train, test = load_dataset(out / "train.safetensors"), load_dataset(out / "test.safetensors")
    assert (train.n_traj, test.n_traj, train.n_steps) == (2, 3, 40)
    assert (train.meta.split, test.meta.split, train.meta.seed, test.meta.seed) == ("train", "test", 5, 5)
    assert train.meta.excitation == "aprbs" and train.y is None
    assert not np.array_equal(train.x[:, 0], test.x[:2, 0])
    expected, _ = generate(5, 2, 40, progress=False, engine=train.meta.engine)
    assert train.x.tobytes() == expected.x.tobytes()

    before = (out / "train.safetensors").read_bytes()
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "--force" in err and "train.safetensors" in err
    assert (out / "train.safetensors").read_bytes() == before

    assert cli([*args, "--force", "--quiet", "--noise", "--excitation", "oper"]) == 0
    again = load_dataset(out / "train.safetensors")
    assert again.y is not None and again.meta.excitation == "oper"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train", "-3"], "argument --train: must be a whole number >= 0, got '-3'"),
        (["--steps", "0"], "argument --steps: must be a whole number >= 1"),
        (["--test", "many"], "argument --test: must be a whole number"),
        (["--excitation", "sine"], "argument --excitation: invalid choice: 'sine'"),
        (["--engine", "fortran"], "argument --engine: invalid choice"),
    ],
)
def test_cli_simulate_bad_flags_exit_2(tmp_path: Path, cli, capsys, flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(["simulate", "--out", str(tmp_path / "d"), *flags])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_cli_simulate_nothing_to_do(tmp_path: Path, cli, capsys) -> None:
    assert cli(["simulate", "--out", str(tmp_path / "d"), "--train", "0", "--test", "0"]) == 2
    assert "nothing to simulate" in capsys.readouterr().err


def test_cli_simulate_single_set(tmp_path: Path, cli) -> None:
    assert cli(["simulate", "--out", str(tmp_path), "--train", "1", "--test", "0", "--steps", "5", "--quiet"]) == 0
    assert (tmp_path / "train.safetensors").is_file() and not (tmp_path / "test.safetensors").exists()
