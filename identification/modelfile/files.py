"""Model files as bytes and as a directory: written by :func:`model_to_bytes` and :func:`save_model`, read by
:func:`load_model_bytes` and :func:`load_model` (every read is validated by
:func:`identification.modelfile.format.check_files`); :func:`read_model_files` reads a directory's two files as
bytes, :func:`read_manifest` its checked manifest."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import stat
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from alutwin.fileio import fsync_dir, utc_now, write_atomic
from identification.data import TrajectoryLike
from identification.kinds import KINDS
from identification.modelfile.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_WEIGHTS_BYTES,
    WEIGHTS_NAME,
    LoadedModel,
    ModelFileError,
    check_architecture_caps,
    check_files,
    check_manifest,
    nonzero_summary,
    tensor_names,
)
from identification.surrogate import Surrogate

__all__ = [
    "dataset_checksum",
    "load_model",
    "load_model_bytes",
    "model_to_bytes",
    "read_manifest",
    "read_model_files",
    "save_model",
    "training_provenance",
]

_MAX_JSON_DEPTH = 32


def dataset_checksum(data: TrajectoryLike) -> str:
    """SHA-256 of a data set's arrays (``x``, ``u``, ``fault_step`` as float64/int64 with their shapes, and ``dt``),
    for the provenance of a model."""
    h = hashlib.sha256()
    for name, arr in (
        ("x", np.asarray(data.x, dtype=np.float64)),
        ("u", np.asarray(data.u, dtype=np.float64)),
        ("fault_step", np.asarray(data.fault_step, dtype=np.int64)),
        ("dt", np.asarray([data.dt], dtype=np.float64)),
    ):
        arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<")))
        h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def training_provenance(train: TrajectoryLike, seed: int, *, epochs: int, members: int, kind: str) -> dict[str, Any]:
    """The provenance a trained model file carries: its data set (APRBS train split, seed, shape, checksum)
    and its training settings."""
    return {
        "dataset": "aprbs, train split",
        "seed": seed,
        "n_traj": int(np.asarray(train.x).shape[0]),
        "n_steps": int(np.asarray(train.u).shape[1]),
        "dataset_sha256": dataset_checksum(train),
        "training": {"epochs": epochs, "members": members, "kind": kind},
    }


def _jsonable(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` as plain JSON types; numpy scalars/arrays and tuples converted, non-finite floats -> None."""
    if depth > _MAX_JSON_DEPTH:
        raise ValueError(f"{where} is nested deeper than {_MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        # JSON has no NaN or inf: a non-finite number (e.g. the window mean of all-diverged rollouts) is null.
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where} has a non-string key {k!r}")
            out[k] = _jsonable(v, f"{where}.{k}", depth + 1)
        return out
    raise ValueError(f"{where} holds a {type(value).__name__}, which is not JSON data")


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("alutwin", "numpy", "torch", "casadi", "safetensors"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def model_to_bytes(
    surrogate: Surrogate,
    *,
    kind: str,
    provenance: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> tuple[bytes, bytes]:
    """The two files of a model, as bytes: ``(manifest.json, weights.safetensors)``.

    Parameters
    ----------
    surrogate : the model.
    kind : a name of :data:`identification.estimator.KINDS`.
    provenance : where the training data came from (seed, n_traj, n_steps, excitation, dataset checksum from
        :func:`dataset_checksum`, ...): JSON data (numpy scalars and arrays are converted).
    metrics : optional scores (JSON data; NaN and inf are written as null, since JSON has neither).

    Returns
    -------
    The manifest's bytes (UTF-8 JSON) and the weights' bytes (safetensors), as :func:`save_model` writes them
    and :func:`load_model_bytes` reads them.

    Raises
    ------
    ValueError : bad arguments (unknown kind, non-JSON provenance, a model beyond the size caps).
    """
    if not isinstance(surrogate, Surrogate):
        raise ValueError(f"surrogate must be a Surrogate, got {type(surrogate).__name__}")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; must be one of {sorted(KINDS)}")
    if not isinstance(provenance, dict):
        raise ValueError(f"provenance must be a dict, got {type(provenance).__name__}")
    if metrics is not None and not isinstance(metrics, dict):
        raise ValueError(f"metrics must be a dict or None, got {type(metrics).__name__}")
    weights = surrogate.weights
    arch = weights.architecture
    check_architecture_caps(arch, weights.n_members, "model file")

    masks = weights.masks is not None
    tensors: dict[str, np.ndarray] = {}
    for i, (w, b) in enumerate(zip(weights.weights, weights.biases, strict=True)):
        tensors[f"layer{i}.weight"] = np.ascontiguousarray(w, dtype="<f8")  # (M, n_in, n_out)
        tensors[f"layer{i}.bias"] = np.ascontiguousarray(b, dtype="<f8")  # (M, n_out)
        if weights.masks is not None:
            tensors[f"layer{i}.mask"] = np.ascontiguousarray(weights.masks[i], dtype=np.uint8)  # (M, n_in, n_out)
    blob = safetensors.numpy.save(tensors)
    if len(blob) > MAX_WEIGHTS_BYTES:
        raise ValueError(f"model file: the weights take {len(blob)} bytes; at most {MAX_WEIGHTS_BYTES} are allowed")

    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "prior": surrogate.prior,
        "architecture": arch.as_dict(),
        "normalization": surrogate.normalization.as_dict(),
        "envelope": None if surrogate.envelope is None else surrogate.envelope.as_dict(),
        "n_members": weights.n_members,
        "masks": masks,
        "nonzero_weights": nonzero_summary(weights),
        "weights": {
            "file": WEIGHTS_NAME,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "bytes": len(blob),
            "tensors": list(tensor_names(len(arch.layer_shapes), masks)),
        },
        "provenance": _jsonable(provenance, "provenance"),
        "metrics": None if metrics is None else _jsonable(metrics, "metrics"),
        "versions": _versions(),
        "created": utc_now(),
    }
    text = json.dumps(manifest, indent=2, allow_nan=False).encode("utf-8") + b"\n"
    if len(text) > MAX_MANIFEST_BYTES:
        raise ValueError(f"model file: the manifest takes {len(text)} bytes; at most {MAX_MANIFEST_BYTES} are allowed")
    return text, blob


def save_model(
    path: str | os.PathLike[str],
    surrogate: Surrogate,
    *,
    kind: str,
    provenance: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a surrogate as a model directory (``weights.safetensors`` + ``manifest.json``).

    Parameters
    ----------
    path : the model directory; created (with its parents) if missing. A path ending in ``manifest.json``
        names its directory.
    surrogate, kind, provenance, metrics : as for :func:`model_to_bytes`.
    overwrite : replace a model already in the directory.

    Returns
    -------
    The model directory.

    Raises
    ------
    ValueError : bad arguments (unknown kind, non-JSON provenance, a model beyond the size caps).
    FileExistsError : the directory already holds a model and ``overwrite`` is false.
    """
    manifest, blob = model_to_bytes(surrogate, kind=kind, provenance=provenance, metrics=metrics)
    directory = Path(path)
    if directory.name == MANIFEST_NAME:
        directory = directory.parent
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"save_model: {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / MANIFEST_NAME).exists() and not overwrite:
        raise FileExistsError(f"{directory} already holds a model; pass overwrite=True to replace it")
    write_atomic(directory / WEIGHTS_NAME, blob)
    write_atomic(directory / MANIFEST_NAME, manifest)
    fsync_dir(directory)
    return directory


def _read_capped(file: Path, cap: int) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes."""
    try:
        st = os.stat(file)
    except FileNotFoundError:
        raise ModelFileError(file, "the file is missing") from None
    except OSError as exc:
        raise ModelFileError(file, f"cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(file, "is not a regular file")
    if st.st_size > cap:
        raise ModelFileError(file, f"is {st.st_size} bytes; at most {cap} are allowed")
    try:
        with open(file, "rb") as f:
            data = f.read(cap + 1)
    except OSError as exc:
        raise ModelFileError(file, f"cannot be read ({exc.strerror})") from None
    if len(data) > cap:
        raise ModelFileError(file, f"is larger than {cap} bytes")
    return data


def _model_dir(path: str | os.PathLike[str]) -> Path:
    """The model directory ``path`` names (it or its ``manifest.json``); ModelFileError if it is none."""
    directory = Path(path)
    if directory.name == MANIFEST_NAME:
        directory = directory.parent
    if not directory.is_dir():
        raise ModelFileError(directory, "is not a model directory (missing or not a directory)")
    return directory


def _read_manifest(directory: Path) -> tuple[bytes, dict[str, Any]]:
    raw = _read_capped(directory / MANIFEST_NAME, MAX_MANIFEST_BYTES)
    return raw, check_manifest(raw, directory / MANIFEST_NAME)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a model directory (or of its ``manifest.json``), read and checked; the weights are not read.

    Raises
    ------
    ModelFileError : (a ``ValueError``) no such directory, or a missing, oversized or invalid manifest; the
        message names the file and the problem.
    """
    return _read_manifest(_model_dir(path))[1]


def read_model_files(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """The bytes ``(manifest.json, weights.safetensors)`` of a model directory (or of its ``manifest.json``).

    Both must be regular files within the size caps; the manifest is parsed and checked before the weights are
    read, so a broken manifest never costs reading the weights. The bytes are for :func:`load_model_bytes`,
    which validates the pair.

    Raises
    ------
    ModelFileError : (a ``ValueError``) no such directory, a missing, oversized or unreadable file, or an invalid
        manifest; the message names the file and the problem.
    """
    directory = _model_dir(path)
    manifest, _ = _read_manifest(directory)
    return manifest, _read_capped(directory / WEIGHTS_NAME, MAX_WEIGHTS_BYTES)


def load_model_bytes(manifest: bytes, weights: bytes, *, source: str | os.PathLike[str] | None = None) -> LoadedModel:
    """Validate and load a model from its two files' bytes (as RegisterModel receives and ExportModel sends them).

    Parameters
    ----------
    manifest : the bytes of ``manifest.json``.
    weights : the bytes of ``weights.safetensors``.
    source : the model directory the bytes were read from, if any: errors name its files, and it becomes
        ``LoadedModel.path``. None (bytes from elsewhere): errors name the bare file names, the path is None.

    Returns
    -------
    The surrogate, its kind and the manifest; every check of the file format applies.

    Raises
    ------
    ModelFileError : (a ``ValueError``) malformed, inconsistent or hostile files; the message names the file
        and the problem (``.problem`` without the file).
    ValueError : ``manifest`` or ``weights`` is not bytes.
    """
    directory = None if source is None else Path(source)
    manifest_file = Path(MANIFEST_NAME) if directory is None else directory / MANIFEST_NAME
    weights_file = Path(WEIGHTS_NAME) if directory is None else directory / WEIGHTS_NAME
    doc, surrogate = check_files(manifest, weights, manifest_file, weights_file)
    return LoadedModel(surrogate, doc["kind"], doc, directory)


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Read and validate a model directory written by :func:`save_model`.

    Parameters
    ----------
    path : the model directory (or its ``manifest.json``).

    Returns
    -------
    The surrogate, its kind and the manifest (:func:`load_model_bytes` of :func:`read_model_files`).

    Raises
    ------
    ModelFileError : (a ``ValueError``) a missing, malformed, inconsistent or hostile file; the message names the
        file and the problem.
    """
    directory = _model_dir(path)
    return load_model_bytes(*read_model_files(directory), source=directory)
