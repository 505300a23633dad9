"""The data set file format: one safetensors file per set, with the metadata as JSON in its header.

The trajectories are tensors and the metadata a JSON string under the key ``"alutwin"`` of the safetensors
header. No pickle is ever read: :func:`load_dataset` parses the header itself, refuses anything that is not a
well-formed data set of this format, and checks shapes, dtypes, finiteness, signal names and a SHA-256 of the
tensors. ``docs/datasets.md`` describes the format.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from alutwin.fileio import fsync_dir, write_atomic
from plant.domain import Fault
from plant.params import SPEC_VERSION
from plant.signals import INPUTS, N_INPUTS, N_STATES, STATES
from plant.simulator import Trajectories

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "Dataset",
    "DatasetError",
    "DatasetMeta",
    "load_dataset",
    "save_dataset",
    "tensor_checksum",
    "trajectory_tensors",
]

FORMAT_NAME = "alutwin.dataset"
FORMAT_VERSION = 1
"""Version of the on-disk layout; :func:`load_dataset` reads exactly the versions in ``_READABLE_VERSIONS``."""
_READABLE_VERSIONS = (1,)

METADATA_KEY = "alutwin"
"""Key of the safetensors header metadata that holds the JSON metadata."""
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


def trajectory_tensors(traj: Trajectories) -> dict[str, np.ndarray]:
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
    tensors = trajectory_tensors(traj)
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
        if not ok or not isinstance(offs, list):  # (ok implies a list: the second test narrows its type)
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
