"""Identification data sets on disk: generation, a validated safetensors format, and ``alutwin simulate``.

One file per set (``train.safetensors``, ``test.safetensors``) holds the trajectories as tensors and the
metadata as a JSON string under the key ``"alutwin"`` of the safetensors header. No pickle is ever read:
:func:`load_dataset` parses the header itself, refuses anything that is not a well-formed data set of this
format, and checks shapes, dtypes, finiteness, signal names and a SHA-256 of the tensors. ``docs/datasets.md``
describes the format.

Seeds: a set is drawn from ``numpy.random.SeedSequence(seed).spawn(len(SPLITS))[SPLITS.index(split)]``, whose
three children draw the initial states, the excitation and the measurement noise. Train and test sets made
with the same ``seed`` are therefore independent, and no ``(seed, split)`` pair reproduces another's data.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import struct
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy
from tqdm import tqdm

from alutwin.cli import CliError
from alutwin.fileio import fsync_dir, write_atomic
from plant.domain import Fault
from plant.excitation import EXCITATIONS, Exogenous, sample_initial_states
from plant.params import SPEC_VERSION
from plant.signals import INPUTS, N_INPUTS, N_STATES, STATES
from plant.simulator import DT, ENGINES, MeasurementNoise, Trajectories, simulate

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "SPLITS",
    "PUBLISHED_SIZES",
    "DEFAULT_ENGINE",
    "DatasetError",
    "DatasetMeta",
    "Dataset",
    "generate",
    "save_dataset",
    "load_dataset",
    "tensor_checksum",
    "register_cli",
]

FORMAT_NAME = "alutwin.dataset"
FORMAT_VERSION = 1
"""Version of the on-disk layout; :func:`load_dataset` reads exactly the versions in ``_READABLE_VERSIONS``."""
_READABLE_VERSIONS = (1,)

METADATA_KEY = "alutwin"
"""Key of the safetensors header metadata that holds the JSON metadata."""

SPLITS = ("train", "test", "validation")
"""Names of the sets; the index is the spawn key of the set's seed stream."""

PUBLISHED_SIZES = {"train": 40, "test": 100, "steps": 5000}
"""Sizes of the published study: 40 training and 100 test trajectories of 5000 steps."""

DEFAULT_ENGINE = "auto" if "auto" in ENGINES else "numpy"
"""Simulation engine used unless one is named: ``"auto"`` where the simulator offers it."""

_TIME_CHUNK = 250  # steps simulated per engine call (progress granularity; results do not depend on it)
_TRAJ_CHUNK = 128  # trajectories simulated together (bounds the engines' working memory)
_MAX_HEADER = 100 * 1024 * 1024  # bytes, as safetensors itself

# tensor name -> (accepted safetensors dtypes, numpy dtype it is held in)
_TENSORS: dict[str, tuple[tuple[str, ...], type]] = {
    "x": (("F64",), np.float64),
    "u": (("F64",), np.float64),
    "y": (("F64",), np.float64),
    "fault_step": (("I64",), np.int64),
    "fault_code": (("I8", "I64"), np.int8),
}
_REQUIRED = ("x", "u", "fault_step", "fault_code")
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1"}
_ST_DTYPES.update({"U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"})


class DatasetError(ValueError):
    """A file that is not a valid data set of this format; the message names the file and the problem."""


@dataclass(frozen=True)
class DatasetMeta:
    """Metadata of a data set, stored as JSON in the safetensors header (see ``docs/datasets.md``).

    Attributes
    ----------
    split : "train", "test" or "validation" (selects the seed stream, see the module docstring).
    seed : non-negative integer seed of ``numpy.random.SeedSequence``.
    excitation : name of the excitation (:data:`plant.excitation.EXCITATIONS`) or another producer's label.
    dt : sample time in seconds.
    n_traj, n_steps : N trajectories of T steps.
    noise_std : per-state standard deviation of the measurement noise in ``y``, or None (no ``y``).
    engine : simulation engine that produced the data.
    description : one line for humans.
    created : UTC time of generation, ISO 8601.
    versions : library versions at generation (python, numpy, safetensors, alutwin, ...).
    sha256 : checksum of the tensors (:func:`tensor_checksum`); "" before it is computed.
    """

    split: str
    seed: int
    excitation: str
    dt: float
    n_traj: int
    n_steps: int
    noise_std: tuple[float, ...] | None
    engine: str
    description: str
    created: str
    versions: Mapping[str, str]
    sha256: str = ""
    spec_version: str = SPEC_VERSION
    state_names: tuple[str, ...] = tuple(s.name for s in STATES)
    state_units: tuple[str, ...] = tuple(s.unit for s in STATES)
    input_names: tuple[str, ...] = tuple(s.name for s in INPUTS)
    input_units: tuple[str, ...] = tuple(s.unit for s in INPUTS)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """The metadata as the JSON string stored in the file (keys sorted)."""
        d = asdict(self)
        d["versions"] = dict(self.versions)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "<metadata>") -> DatasetMeta:
        """Parse and type-check metadata; raises :class:`DatasetError` naming ``source`` and the problem."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{source}: the {METADATA_KEY!r} metadata is not valid JSON ({exc})") from None
        if not isinstance(d, dict):
            raise DatasetError(f"{source}: the {METADATA_KEY!r} metadata must be a JSON object")
        if d.get("format") != FORMAT_NAME:
            raise DatasetError(f"{source}: format is {d.get('format')!r}, expected {FORMAT_NAME!r}")
        fv = d.get("format_version")
        if fv not in _READABLE_VERSIONS or isinstance(fv, bool):
            raise DatasetError(
                f"{source}: unknown format_version {fv!r}; this alutwin reads versions {list(_READABLE_VERSIONS)}"
            )
        expected = {f.name for f in cls.__dataclass_fields__.values()}
        missing = sorted(expected - d.keys())
        if missing:
            raise DatasetError(f"{source}: metadata lacks the keys {missing}")
        extra = sorted(d.keys() - expected)
        if extra:
            raise DatasetError(f"{source}: metadata has unknown keys {extra} for format version {fv}")

        def want(key: str, kind: type | tuple[type, ...], what: str) -> Any:
            v = d[key]
            if not isinstance(v, kind) or isinstance(v, bool):
                raise DatasetError(f"{source}: metadata {key!r} must be {what}, got {v!r}")
            return v

        def str_list(key: str) -> tuple[str, ...]:
            v = d[key]
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise DatasetError(f"{source}: metadata {key!r} must be a list of strings, got {v!r}")
            return tuple(v)

        noise = d["noise_std"]
        if noise is not None:
            ok = isinstance(noise, list) and len(noise) == N_STATES
            ok = ok and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in noise)
            if not ok or not all(np.isfinite(s) and s >= 0 for s in noise):
                raise DatasetError(
                    f"{source}: metadata 'noise_std' must be null or {N_STATES} finite values >= 0, got {noise!r}"
                )
            noise = tuple(float(s) for s in noise)
        versions = d["versions"]
        if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
            raise DatasetError(f"{source}: metadata 'versions' must be an object of strings, got {versions!r}")
        dt = float(want("dt", (int, float), "a positive number of seconds"))
        if not (np.isfinite(dt) and dt > 0):
            raise DatasetError(f"{source}: metadata 'dt' must be a positive number of seconds, got {dt!r}")
        seed = want("seed", int, "a non-negative integer")
        if seed < 0:
            raise DatasetError(f"{source}: metadata 'seed' must be a non-negative integer, got {seed!r}")
        checksum = want("sha256", str, "a hex string")
        if not re.fullmatch(r"[0-9a-f]{64}", checksum):
            raise DatasetError(f"{source}: metadata 'sha256' must be 64 lower-case hex digits, got {checksum!r}")
        return cls(
            split=want("split", str, "a string"),
            seed=seed,
            excitation=want("excitation", str, "a string"),
            dt=dt,
            n_traj=want("n_traj", int, "an integer"),
            n_steps=want("n_steps", int, "an integer"),
            noise_std=noise,
            engine=want("engine", str, "a string"),
            description=want("description", str, "a string"),
            created=want("created", str, "a string"),
            versions=dict(versions),
            sha256=checksum,
            spec_version=want("spec_version", str, "a string"),
            state_names=str_list("state_names"),
            state_units=str_list("state_units"),
            input_names=str_list("input_names"),
            input_units=str_list("input_units"),
            format=FORMAT_NAME,
            format_version=fv,
        )


@dataclass(frozen=True)
class Dataset:
    """A data set read by :func:`load_dataset` (arrays are read-only).

    Attributes
    ----------
    x : (N, T + 1, 8) float64 true states (units of :data:`plant.signals.STATES`).
    u : (N, T, 5) float64 applied inputs (units of :data:`plant.signals.INPUTS`), held over each step.
    fault_step : (N,) int64, the step whose result left the valid domain, or -1.
    fault_code : (N,) int8, a :class:`plant.domain.Fault` code (0 where none).
    y : (N, T + 1, 8) float64 noisy measurements, or None.
    meta : the metadata.
    path : the file it was read from (None if built in memory).
    """

    x: np.ndarray
    u: np.ndarray
    fault_step: np.ndarray
    fault_code: np.ndarray
    y: np.ndarray | None
    meta: DatasetMeta
    path: Path | None = field(default=None, compare=False)

    @property
    def n_traj(self) -> int:
        return self.x.shape[0]

    @property
    def n_steps(self) -> int:
        return self.u.shape[1]

    @property
    def dt(self) -> float:
        return self.meta.dt

    def trajectories(self) -> Trajectories:
        """The data as :class:`plant.simulator.Trajectories`."""
        return Trajectories(self.x, self.u, self.fault_step, self.fault_code, self.y, self.meta.dt)


def tensor_checksum(tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 (hex) of the tensors: for each name in sorted order, the line ``name|dtype|shape`` (dtype as
    numpy's little-endian ``str``, e.g. ``<f8``; shape as comma-separated integers) and then the raw C-order
    little-endian bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        h.update(f"{name}|{arr.dtype.str}|{','.join(str(n) for n in arr.shape)}\n".encode())
        h.update(arr.tobytes(order="C"))
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__, "safetensors": safetensors.__version__}
    try:
        out["alutwin"] = version("alutwin")
    except PackageNotFoundError:
        out["alutwin"] = "unknown"
    return out


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _simulate_chunked(
    x0: np.ndarray,
    exo: Exogenous,
    dt: float,
    engine: str,
    bar: tqdm,
    traj_chunk: int = _TRAJ_CHUNK,
    time_chunk: int = _TIME_CHUNK,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Simulate in blocks of trajectories and of time; bit-identical to one call of the engine.

    A later time block starts every trajectory from its last state; a trajectory that faulted earlier is
    simulated along (so that the batch is the same) but its results are replaced by the held state and the
    repeated last input, as the simulator does after a fault.
    """
    n, t = exo.shape
    xs = np.empty((n, t + 1, N_STATES))  # (N, T+1, 8)
    us = np.empty((n, t, N_INPUTS))  # (N, T, 5)
    fault_step = np.full(n, -1, dtype=np.int64)
    fault_code = np.zeros(n, dtype=np.int8)
    xs[:, 0] = x0
    for b0 in range(0, n, traj_chunk):
        rows = slice(b0, min(n, b0 + traj_chunk))
        for k0 in range(0, t, time_chunk):
            k1 = min(t, k0 + time_chunk)
            part = Exogenous(
                exo.current[rows, k0:k1],
                exo.acd[rows, k0:k1],
                exo.alumina_extra[rows, k0:k1],
                exo.alf3_extra[rows, k0:k1],
            )
            tr = simulate(xs[rows, k0], part, dt=dt, engine=engine)
            dead = fault_code[rows] != 0  # faulted in an earlier block
            x_blk = np.where(dead[:, None, None], xs[rows, k0][:, None, :], tr.x[:, 1:])  # (b, k1-k0, 8)
            u_blk = np.where(dead[:, None, None], us[rows, k0 - 1][:, None, :] if k0 else tr.u, tr.u)
            xs[rows, k0 + 1 : k1 + 1] = x_blk
            us[rows, k0:k1] = u_blk
            new = ~dead & (tr.fault_code != 0)
            idx = np.arange(rows.start, rows.stop)[new]
            fault_step[idx] = tr.fault_step[new] + k0
            fault_code[idx] = tr.fault_code[new]
            bar.update((rows.stop - rows.start) * (k1 - k0))
    return xs, us, fault_step, fault_code


def generate(
    seed: int,
    n_traj: int,
    n_steps: int,
    excitation: str = "aprbs",
    noise: MeasurementNoise | None = None,
    engine: str = DEFAULT_ENGINE,
    progress: bool = True,
    *,
    split: str = "train",
    dt: float = DT,
) -> tuple[Trajectories, DatasetMeta]:
    """Simulate a data set of ``n_traj`` trajectories of ``n_steps`` steps.

    Parameters
    ----------
    seed : int
        Non-negative seed. The set draws from child ``SPLITS.index(split)`` of
        ``numpy.random.SeedSequence(seed)``, which spawns three streams: initial states, excitation, noise.
        The same ``(seed, split, sizes, excitation, noise, engine)`` gives bit-identical data.
    n_traj, n_steps : int
        Number of trajectories N and of steps T per trajectory.
    excitation : str
        Name in :data:`plant.excitation.EXCITATIONS`; the cell's feed controllers act on top.
    noise : MeasurementNoise or None
        Measurement noise for ``y``; None gives no ``y``.
    engine : str
        Simulation engine (:data:`plant.simulator.ENGINES`).
    progress : bool
        Show a progress bar (only when stderr is a terminal).
    split : str
        One of :data:`SPLITS`.
    dt : float
        Sample time in seconds.

    Returns
    -------
    (Trajectories, DatasetMeta)
        The trajectories (x (N, T+1, 8), u (N, T, 5), ...) and their metadata, checksum included.
    """
    seed = _check_int("seed", seed, 0)
    n_traj = _check_int("n_traj", n_traj, 1)
    n_steps = _check_int("n_steps", n_steps, 1)
    if excitation not in EXCITATIONS:
        raise ValueError(f"unknown excitation {excitation!r}; must be one of {sorted(EXCITATIONS)}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; must be one of {sorted(ENGINES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; must be one of {list(SPLITS)}")
    if noise is not None and not isinstance(noise, MeasurementNoise):
        raise ValueError(f"noise must be a MeasurementNoise or None, got {type(noise).__name__}")
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number of seconds, got {dt!r}")

    set_seq = np.random.SeedSequence(seed).spawn(len(SPLITS))[SPLITS.index(split)]
    init_rng, exc_rng, noise_rng = (np.random.default_rng(s) for s in set_seq.spawn(3))
    x0 = sample_initial_states(init_rng, n_traj)  # (N, 8)
    exo = EXCITATIONS[excitation](exc_rng, n_traj, n_steps)  # (N, T) each
    show = progress and sys.stderr.isatty()
    with tqdm(total=n_traj * n_steps, unit="step", unit_scale=True, desc=split, disable=not show) as bar:
        xs, us, fault_step, fault_code = _simulate_chunked(x0, exo, dt, engine, bar)
    y = noise.apply(noise_rng, xs) if noise is not None else None  # (N, T+1, 8)
    traj = Trajectories(xs, us, fault_step, fault_code, y, dt)
    noise_txt = "no measurement noise" if noise is None else f"measurement noise std {list(noise.std)}"
    meta = DatasetMeta(
        split=split,
        seed=seed,
        excitation=excitation,
        dt=float(dt),
        n_traj=n_traj,
        n_steps=n_steps,
        noise_std=None if noise is None else tuple(float(s) for s in noise.std),
        engine=engine,
        description=(
            f"{split} set: {n_traj} trajectories of {n_steps} steps (dt {dt:g} s) under the {excitation!r} "
            f"excitation with the cell's feed controllers, seed {seed}, {noise_txt}"
        ),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=_versions(),
        sha256=tensor_checksum(_tensors(traj)),
    )
    return traj, meta


def _tensors(traj: Trajectories) -> dict[str, np.ndarray]:
    """The tensors of a data set; fault codes are held as int8 (the codes are small)."""
    code = np.asarray(traj.fault_code)
    if code.dtype != np.int8:
        if not np.issubdtype(code.dtype, np.integer) or (code.size and (code.min() < -128 or code.max() > 127)):
            raise ValueError(f"fault_code must hold small integer Fault codes, got dtype {code.dtype}")
        code = code.astype(np.int8)
    out = {
        "x": np.asarray(traj.x),
        "u": np.asarray(traj.u),
        "fault_step": np.asarray(traj.fault_step),
        "fault_code": code,
    }
    if traj.y is not None:
        out["y"] = np.asarray(traj.y)
    return out


def _validate(tensors: dict[str, np.ndarray], meta: DatasetMeta, source: str) -> None:
    """Check tensors against each other, the metadata and ``plant.signals``; DatasetError on the first problem."""

    def fail(msg: str) -> DatasetError:
        return DatasetError(f"{source}: {msg}")

    missing = [k for k in _REQUIRED if k not in tensors]
    if missing:
        raise fail(f"missing tensor(s) {missing}; a data set holds {list(_REQUIRED)} and optionally 'y'")
    extra = sorted(tensors.keys() - _TENSORS.keys())
    if extra:
        raise fail(f"unexpected tensor(s) {extra}")
    for name, arr in tensors.items():
        if arr.dtype != _TENSORS[name][1] and not (name == "fault_code" and arr.dtype == np.int64):
            raise fail(f"tensor {name!r} has dtype {arr.dtype}, expected {np.dtype(_TENSORS[name][1])}")
    x, u = tensors["x"], tensors["u"]
    if x.ndim != 3 or x.shape[2] != N_STATES:
        raise fail(f"tensor 'x' must have shape (N, T+1, {N_STATES}), got {x.shape}")
    n, t1 = x.shape[:2]
    if u.shape != (n, t1 - 1, N_INPUTS):
        raise fail(f"tensor 'u' must have shape (N, T, {N_INPUTS}) = {(n, t1 - 1, N_INPUTS)} to match x {x.shape}")
    if n < 1 or t1 < 2:
        raise fail(f"a data set needs at least one trajectory of one step, got x {x.shape}")
    for name in ("fault_step", "fault_code"):
        if tensors[name].shape != (n,):
            raise fail(f"tensor {name!r} must have shape (N,) = ({n},), got {tensors[name].shape}")
    if "y" in tensors and tensors["y"].shape != x.shape:
        raise fail(f"tensor 'y' must have the shape of x {x.shape}, got {tensors['y'].shape}")
    for name in ("x", "u", "y"):
        if name in tensors and not np.all(np.isfinite(tensors[name])):
            bad = np.argwhere(~np.isfinite(tensors[name]))[0]
            raise fail(f"tensor {name!r} holds non-finite values (first at index {tuple(int(i) for i in bad)})")
    fs, fc = tensors["fault_step"], tensors["fault_code"]
    if np.any((fs < -1) | (fs >= t1 - 1)):
        raise fail(f"fault_step must be -1 or a step in [0, {t1 - 2}], got values in [{fs.min()}, {fs.max()}]")
    codes = {int(c) for c in Fault}
    if not set(np.unique(fc).tolist()) <= codes:
        raise fail(f"fault_code holds values outside the Fault codes {sorted(codes)}")
    if np.any((fs == -1) != (fc == 0)):
        raise fail("fault_step and fault_code disagree (fault_step == -1 exactly where fault_code == 0)")
    # metadata against tensors and plant.signals
    if (meta.n_traj, meta.n_steps) != (n, t1 - 1):
        raise fail(f"metadata says {meta.n_traj} x {meta.n_steps} steps but x holds {n} x {t1 - 1}")
    if ("y" in tensors) != (meta.noise_std is not None):
        raise fail("tensor 'y' must be present exactly when metadata 'noise_std' is set")
    expect = {
        "state_names": tuple(s.name for s in STATES),
        "state_units": tuple(s.unit for s in STATES),
        "input_names": tuple(s.name for s in INPUTS),
        "input_units": tuple(s.unit for s in INPUTS),
    }
    for key, want in expect.items():
        if getattr(meta, key) != want:
            raise fail(f"metadata {key} {list(getattr(meta, key))} do not match plant.signals {list(want)}")
    if meta.spec_version != SPEC_VERSION:
        raise fail(f"data were made for spec {meta.spec_version!r}; this plant implements {SPEC_VERSION!r}")


def save_dataset(path: str | os.PathLike[str], traj: Trajectories, meta: DatasetMeta) -> Path:
    """Write ``traj`` and ``meta`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    The checksum is computed from the tensors; a non-empty ``meta.sha256`` that differs is an error (the
    metadata belongs to other data). The data are validated as :func:`load_dataset` would; the folder must
    exist. Returns the path written.
    """
    path = Path(path)
    tensors = _tensors(traj)
    checksum = tensor_checksum(tensors)
    if meta.sha256 and meta.sha256 != checksum:
        raise ValueError(f"{path}: meta.sha256 does not match the tensors being saved (metadata of other data?)")
    if float(traj.dt) != float(meta.dt):
        raise ValueError(f"{path}: trajectories have dt {traj.dt!r} but the metadata says {meta.dt!r}")
    meta = DatasetMeta(**{**asdict(meta), "versions": dict(meta.versions), "sha256": checksum})
    _validate(tensors, meta, str(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {path.parent} does not exist")
    blob = safetensors.numpy.save(tensors, metadata={METADATA_KEY: meta.to_json()})
    write_atomic(path, blob)
    with contextlib.suppress(OSError):  # make the rename durable; not every platform can open a folder
        fsync_dir(path.parent)
    return path


def _sniff(head: bytes) -> str:
    """A hint of what a non-safetensors file is, from its first bytes."""
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return " (it looks like a Python pickle; pickles are never loaded)"
    if head[:4] == b"PK\x03\x04":
        return " (it looks like a zip archive, e.g. torch.save output; never loaded)"
    if head[:6] == b"\x93NUMPY":
        return " (it looks like a .npy file)"
    return ""


def _parse_header(blob: bytes, source: str) -> tuple[dict[str, Any], int]:
    """The safetensors JSON header and the offset where tensor data start; DatasetError if malformed."""

    def fail(msg: str) -> DatasetError:
        return DatasetError(f"{source}: not a safetensors data set: {msg}{_sniff(blob[:8])}")

    if len(blob) < 8:
        raise fail(f"the file has only {len(blob)} bytes")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > _MAX_HEADER or n > len(blob) - 8:
        raise fail(f"header length {n} does not fit in the file of {len(blob)} bytes")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"the header is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise fail("the header is not a JSON object")
    data_len = len(blob) - 8 - n
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(info, dict) and info.get("dtype") in _ST_DTYPES
        ok = ok and isinstance(info.get("shape"), list) and all(isinstance(s, int) and s >= 0 for s in info["shape"])
        offs = info.get("data_offsets") if isinstance(info, dict) else None
        ok = ok and isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
        if not ok:
            raise fail(f"malformed header entry for tensor {name!r}")
        size = int(np.prod(info["shape"], dtype=np.int64)) * np.dtype(_ST_DTYPES[info["dtype"]]).itemsize
        if offs[1] - offs[0] != size or offs[0] < 0:
            raise fail(f"tensor {name!r}: offsets {offs} do not hold {info['dtype']} of shape {info['shape']}")
        end = max(end, offs[1])
    if end > data_len:
        raise DatasetError(
            f"{source}: truncated file: the header describes {end} bytes of tensor data but the file holds {data_len}"
        )
    if end < data_len:
        raise DatasetError(f"{source}: {data_len - end} unexpected bytes after the tensor data")
    return header, 8 + n


def load_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read and validate a data set written by :func:`save_dataset`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist or is not a file.
    DatasetError (a ValueError)
        If the file is not a safetensors file (a pickle is recognised and refused, never unpickled), is
        truncated, its format name or version is unknown, a tensor is missing, has the wrong shape or dtype
        or holds NaN/inf, the checksum does not match, or the signal names differ from ``plant.signals``.
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise FileNotFoundError(f"{source}: no such data set file")
    if not path.is_file():
        raise FileNotFoundError(f"{source}: not a file")
    blob = path.read_bytes()
    header, _ = _parse_header(blob, source)
    meta_raw = header.get("__metadata__")
    if not isinstance(meta_raw, dict) or METADATA_KEY not in meta_raw:
        raise DatasetError(f"{source}: a safetensors file but not an alutwin data set (no {METADATA_KEY!r} metadata)")
    meta = DatasetMeta.from_json(meta_raw[METADATA_KEY], source)
    for name, info in header.items():
        if name in _TENSORS and info["dtype"] not in _TENSORS[name][0]:
            raise DatasetError(f"{source}: tensor {name!r} has dtype {info['dtype']}, expected {_TENSORS[name][0][0]}")
    try:
        tensors = safetensors.numpy.load(blob)
    except Exception as exc:  # the library's SafetensorError is a bare Exception subclass
        raise DatasetError(f"{source}: cannot decode the tensors: {exc}") from None
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    _validate(tensors, meta, source)
    if tensor_checksum(tensors) != meta.sha256:
        raise DatasetError(f"{source}: checksum mismatch: the tensors do not match the sha256 of the metadata")
    tensors["fault_code"] = tensors["fault_code"].astype(np.int8)
    for arr in tensors.values():
        arr.setflags(write=False)
    return Dataset(
        x=tensors["x"],
        u=tensors["u"],
        fault_step=tensors["fault_step"],
        fault_code=tensors["fault_code"],
        y=tensors.get("y"),
        meta=meta,
        path=path,
    )


# ----------------------------------------------------------------------------------------------- CLI


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return v


def _positive(text: str) -> int:
    v = _count(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return v


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``alutwin simulate``: write ``DIR/train.safetensors`` and ``DIR/test.safetensors``."""
    p = subparsers.add_parser(
        "simulate",
        help="simulate identification data sets (train and test) to safetensors files",
        description=(
            "Simulate the training and test sets of the published study (40 and 100 trajectories of 5000 "
            "steps of 10 s by default) and write OUT/train.safetensors and OUT/test.safetensors. The test set "
            "draws from an independent stream of the same seed. A size of 0 skips that set."
        ),
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--train", type=_count, default=PUBLISHED_SIZES["train"], metavar="N", help="training trajectories")
    p.add_argument("--test", type=_count, default=PUBLISHED_SIZES["test"], metavar="N", help="test trajectories")
    p.add_argument(
        "--steps", type=_positive, default=PUBLISHED_SIZES["steps"], metavar="T", help="steps per trajectory"
    )
    p.add_argument("--seed", type=_count, default=0, help="seed (non-negative integer)")
    p.add_argument("--excitation", choices=sorted(EXCITATIONS), default="aprbs", help="excitation (default aprbs)")
    p.add_argument("--noise", action="store_true", help="add measurement noise y (2 degC on the bath temperature)")
    p.add_argument("--engine", choices=sorted(ENGINES), default=DEFAULT_ENGINE, help="simulation engine")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_simulate)


def _describe_faults(traj: Trajectories, dt: float) -> str:
    idx = np.flatnonzero(traj.fault_step != -1)
    if idx.size == 0:
        return "faults: none"
    parts = [
        f"#{i} at step {int(traj.fault_step[i])} ({traj.fault_step[i] * dt / 3600:.1f} h): "
        f"{Fault(int(traj.fault_code[i])).describe()}"
        for i in idx[:5]
    ]
    more = f"; and {idx.size - 5} more" if idx.size > 5 else ""
    return f"faults: {idx.size} of {traj.n_traj} trajectories stopped early ({'; '.join(parts)}{more})"


def _run_simulate(args: argparse.Namespace) -> int:
    sizes = {"train": args.train, "test": args.test}
    if not any(sizes.values()):
        raise CliError("--train and --test are both 0: nothing to simulate")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a folder")
    targets = {split: out / f"{split}.safetensors" for split, n in sizes.items() if n > 0}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not args.force:
        raise CliError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    noise = MeasurementNoise() if args.noise else None
    t_all = time.perf_counter()
    for split, path in targets.items():
        t0 = time.perf_counter()
        traj, meta = generate(
            args.seed,
            sizes[split],
            args.steps,
            args.excitation,
            noise,
            args.engine,
            progress=not args.no_progress,
            split=split,
        )
        save_dataset(path, traj, meta)
        mb = path.stat().st_size / 1e6
        print(
            f"{split:5s} {meta.n_traj:4d} x {meta.n_steps} steps -> {path} ({mb:.1f} MB, "
            f"{time.perf_counter() - t0:.1f} s); {_describe_faults(traj, meta.dt)}"
        )
    print(
        f"seed {args.seed}, excitation {args.excitation}, engine {args.engine}, "
        f"noise {'on' if noise else 'off'}; total {time.perf_counter() - t_all:.1f} s"
    )
    return 0
