"""What a valid model file is: names, size caps, and the validation of untrusted manifest and weights bytes.

Nothing is ever unpickled: the weights are parsed by safetensors' own (safe) parser after a byte-level sniff and
a checksum check, the manifest by a strict JSON parser (no NaN, no duplicate keys, size caps), and every field,
tensor name, dtype, shape and value is validated before a :class:`~identification.surrogate.Surrogate` is
built. Every refusal is a :class:`ModelFileError` (a ``ValueError``) naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from identification.data import Envelope, Normalization
from identification.kinds import KINDS
from identification.network import Architecture, EnsembleWeights
from identification.surrogate import PRIORS, Surrogate

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LoadedModel",
    "MANIFEST_NAME",
    "MAX_HIDDEN_LAYERS",
    "MAX_MANIFEST_BYTES",
    "MAX_MEMBERS",
    "MAX_UNITS",
    "MAX_WEIGHTS_BYTES",
    "ModelFileError",
    "SUPPORTED_VERSIONS",
    "WEIGHTS_NAME",
    "check_architecture_caps",
    "check_files",
    "check_manifest",
    "nonzero_summary",
    "tensor_names",
]

FORMAT_NAME = "alutwin-surrogate"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)  # 2 adds the training envelope (null where not known)
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "weights.safetensors"

MAX_MANIFEST_BYTES = 1 << 20  # 1 MiB
MAX_WEIGHTS_BYTES = 64 << 20  # 64 MiB
MAX_MEMBERS = 64
MAX_HIDDEN_LAYERS = 8
MAX_UNITS = 256

_MANIFEST_KEYS = frozenset(
    {
        "format",
        "format_version",
        "kind",
        "prior",
        "architecture",
        "normalization",
        "n_members",
        "masks",
        "nonzero_weights",
        "weights",
        "provenance",
        "metrics",
        "versions",
        "created",
    }
)
_KEYS_OF_VERSION = {1: _MANIFEST_KEYS, 2: _MANIFEST_KEYS | {"envelope"}}
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelFileError(ValueError):
    """A model file that is missing, malformed, inconsistent or hostile."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"model file {os.fspath(path)}: {problem}")
        self.path = os.fspath(path)
        self.problem = problem


@dataclass(frozen=True)
class LoadedModel:
    """A validated model, read from a model directory or from its two files' bytes."""

    surrogate: Surrogate
    kind: str
    manifest: dict[str, Any]
    path: Path | None  # the model directory; None when loaded from bytes

    @property
    def provenance(self) -> dict[str, Any]:
        return self.manifest["provenance"]

    @property
    def metrics(self) -> dict[str, Any] | None:
        return self.manifest["metrics"]


def tensor_names(n_layers: int, masks: bool) -> tuple[str, ...]:
    """Names of the tensors of a weights file with ``n_layers`` weight matrices."""
    names = []
    for i in range(n_layers):
        names += [f"layer{i}.weight", f"layer{i}.bias"]
        if masks:
            names.append(f"layer{i}.mask")
    return tuple(names)


def check_architecture_caps(arch: Architecture, n_members: int, where: str) -> None:
    """ValueError (prefixed by ``where``) if the model exceeds the member, layer or unit caps."""
    if not 1 <= n_members <= MAX_MEMBERS:
        raise ValueError(f"{where}: {n_members} members; at most {MAX_MEMBERS} are allowed")
    if len(arch.hidden) > MAX_HIDDEN_LAYERS:
        raise ValueError(f"{where}: {len(arch.hidden)} hidden layers; at most {MAX_HIDDEN_LAYERS} are allowed")
    sizes = (arch.n_in, *arch.hidden, arch.n_out)
    if max(sizes) > MAX_UNITS:
        raise ValueError(f"{where}: layer sizes {sizes}; at most {MAX_UNITS} units per layer are allowed")


def nonzero_summary(weights: EnsembleWeights) -> dict[str, Any]:
    """The manifest's ``nonzero_weights``: non-zero weight counts per layer, per member and in all."""
    nz = weights.nonzero()  # (M, L)
    return {
        "per_layer": nz.sum(axis=0).astype(int).tolist(),
        "per_member": nz.astype(int).tolist(),
        "total": int(nz.sum()),
    }


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _parse_manifest(raw: bytes, file: Path) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFileError(file, "is not UTF-8 text") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(file, f"is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(doc, dict):
        raise ModelFileError(file, f"must hold a JSON object, got {type(doc).__name__}")
    return doc


def _show(v: Any) -> str:
    """A value from an untrusted file, for an error message (shortened)."""
    text = repr(v)
    return text if len(text) <= 100 else text[:97] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_manifest(doc: dict[str, Any], file: Path) -> tuple[Architecture, Normalization, Envelope | None]:
    """Validate the manifest's fields; the architecture, normalisation and training envelope it describes."""

    def bad(problem: str) -> ModelFileError:
        return ModelFileError(file, problem)

    if doc.get("format") != FORMAT_NAME:
        raise bad(f"format must be {FORMAT_NAME!r}, got {_show(doc.get('format'))}")
    version = doc.get("format_version")
    if not _is_int(version) or version not in SUPPORTED_VERSIONS:
        raise bad(f"unknown format_version {_show(version)}; this reader supports {list(SUPPORTED_VERSIONS)}")
    keys, expected_keys = set(doc), _KEYS_OF_VERSION[version]
    if keys != expected_keys:
        missing, extra = sorted(expected_keys - keys), sorted(keys - expected_keys)
        raise bad(f"manifest keys differ from format version {version}: missing {missing}, unexpected {extra[:20]}")
    if not isinstance(doc["kind"], str) or doc["kind"] not in KINDS:
        raise bad(f"unknown kind {_show(doc['kind'])}; must be one of {sorted(KINDS)}")
    if not isinstance(doc["prior"], str) or doc["prior"] not in PRIORS:
        raise bad(f"unknown prior {_show(doc['prior'])}; must be one of {sorted(PRIORS)}")
    if not _is_int(doc["n_members"]) or not 1 <= doc["n_members"] <= MAX_MEMBERS:
        raise bad(f"n_members must be an integer in [1, {MAX_MEMBERS}], got {_show(doc['n_members'])}")
    if not isinstance(doc["masks"], bool):
        raise bad("masks must be true or false")
    for key in ("provenance", "versions"):
        if not isinstance(doc[key], dict):
            raise bad(f"{key} must be an object")
    if doc["metrics"] is not None and not isinstance(doc["metrics"], dict):
        raise bad("metrics must be an object or null")
    if not isinstance(doc["created"], str):
        raise bad("created must be a string")

    a = doc["architecture"]
    arch_keys = set(Architecture().as_dict())
    if not isinstance(a, dict) or set(a) != arch_keys:
        raise bad(f"architecture must be an object with exactly the keys {sorted(arch_keys)}")
    hidden = a["hidden"]
    if not isinstance(hidden, list) or len(hidden) > MAX_HIDDEN_LAYERS:
        raise bad(f"architecture.hidden must be a list of at most {MAX_HIDDEN_LAYERS} layer widths")
    for name, v in (("n_in", a["n_in"]), ("n_out", a["n_out"]), *((f"hidden[{i}]", h) for i, h in enumerate(hidden))):
        if not _is_int(v) or not 1 <= v <= MAX_UNITS:
            raise bad(f"architecture.{name} must be an integer in [1, {MAX_UNITS}], got {_show(v)}")
    try:
        arch = Architecture.from_dict(a)
    except (ValueError, TypeError) as exc:
        raise bad(f"invalid architecture: {exc}") from None

    n = doc["normalization"]
    sizes = {"feature_mean": arch.n_in, "feature_std": arch.n_in, "target_mean": arch.n_out, "target_std": arch.n_out}
    if not isinstance(n, dict) or set(n) != {*sizes, "dt"}:
        raise bad(f"normalization must be an object with exactly the keys {sorted({*sizes, 'dt'})}")
    for name, size in sizes.items():
        v = n[name]
        if not isinstance(v, list) or len(v) != size or not all(_is_number(e) for e in v):
            raise bad(f"normalization.{name} must be a list of {size} numbers")
    if not _is_number(n["dt"]):
        raise bad("normalization.dt must be a number")
    try:
        norm = Normalization.from_dict(n)
    except (ValueError, OverflowError) as exc:
        raise bad(f"invalid normalization: {exc}") from None

    nz = doc["nonzero_weights"]
    if not isinstance(nz, dict) or set(nz) != {"per_layer", "per_member", "total"}:
        raise bad("nonzero_weights must be an object with exactly the keys per_layer, per_member, total")

    w = doc["weights"]
    if not isinstance(w, dict) or set(w) != {"file", "sha256", "bytes", "tensors"}:
        raise bad("weights must be an object with exactly the keys file, sha256, bytes, tensors")
    if w["file"] != WEIGHTS_NAME:  # the manifest never chooses which file is read
        raise bad(f"weights.file must be {WEIGHTS_NAME!r}, got {_show(w['file'])}")
    if not isinstance(w["sha256"], str) or not _SHA256.fullmatch(w["sha256"]):
        raise bad("weights.sha256 must be 64 lower-case hexadecimal digits")
    if not _is_int(w["bytes"]) or not 0 < w["bytes"] <= MAX_WEIGHTS_BYTES:
        raise bad(f"weights.bytes must be an integer in [1, {MAX_WEIGHTS_BYTES}]")
    expected = list(tensor_names(len(arch.layer_shapes), doc["masks"]))
    if w["tensors"] != expected:
        raise bad(f"weights.tensors must list {expected} for this architecture")
    return arch, norm, _check_envelope(doc.get("envelope"), bad)


def _check_envelope(e: Any, bad: Callable[[str], ModelFileError]) -> Envelope | None:
    """The training envelope of a manifest (None: absent or null)."""
    if e is None:
        return None
    sizes = {"x_low": 8, "x_high": 8, "u_low": 5, "u_high": 5}
    if not isinstance(e, dict) or set(e) != set(sizes):
        raise bad(f"envelope must be null or an object with exactly the keys {sorted(sizes)}")
    for name, size in sizes.items():
        v = e[name]
        if not isinstance(v, list) or len(v) != size or not all(_is_number(x) for x in v):
            raise bad(f"envelope.{name} must be a list of {size} numbers")
    try:
        return Envelope.from_dict(e)
    except (ValueError, OverflowError) as exc:
        raise bad(f"invalid envelope: {exc}") from None


def _sniff_safetensors(data: bytes, file: Path) -> None:
    """Byte-level check that ``data`` looks like safetensors (8-byte little-endian header length, JSON header)."""
    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if 2 <= header_len <= len(data) - 8 and data[8:9] == b"{":
        return
    if data[:1] == b"\x80":  # pickle protocols 2 and later start with PROTO (0x80)
        hint = "it looks like a Python pickle (refused, never unpickled)"
    elif data[:4] == b"PK\x03\x04":
        hint = "it looks like a zip archive (e.g. torch.save output)"
    elif len(data) < 10:
        hint = f"only {len(data)} bytes"
    else:
        hint = "bad header: truncated, or another format"
    raise ModelFileError(file, f"is not a safetensors file ({hint})")


def _read_tensors(data: bytes, file: Path, doc: dict[str, Any]) -> dict[str, np.ndarray]:
    _sniff_safetensors(data, file)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != doc["weights"]["bytes"] or digest != doc["weights"]["sha256"]:
        raise ModelFileError(
            file,
            f"checksum mismatch with {MANIFEST_NAME} (sha256 {digest[:16]}..., {len(data)} bytes; the manifest says "
            f"{doc['weights']['sha256'][:16]}..., {doc['weights']['bytes']} bytes): the files do not belong together",
        )
    try:
        # safetensors' parser reads a JSON header and raw little-endian buffers; it never executes code.
        tensors = safetensors.numpy.load(data)
    except Exception as exc:  # any parser failure on untrusted bytes is a refused file
        raise ModelFileError(file, f"is not a valid safetensors file ({str(exc)[:200]})") from None
    return {k: np.array(v, copy=True) for k, v in tensors.items()}


def _check_tensors(
    tensors: dict[str, np.ndarray], arch: Architecture, n_members: int, masks: bool, file: Path
) -> EnsembleWeights:
    expected = tensor_names(len(arch.layer_shapes), masks)
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelFileError(file, f"tensors differ from the manifest: missing {missing}, unexpected {extra[:20]}")
    ws, bs, ms = [], [], []
    for i, (a, b) in enumerate(arch.layer_shapes):
        specs: list[tuple[str, tuple[int, ...], type[np.generic]]] = [
            (f"layer{i}.weight", (n_members, a, b), np.float64),
            (f"layer{i}.bias", (n_members, b), np.float64),
        ]
        if masks:
            specs.append((f"layer{i}.mask", (n_members, a, b), np.uint8))
        for name, shape, dtype in specs:
            t = tensors[name]
            if t.dtype != dtype:
                raise ModelFileError(file, f"tensor {name} has dtype {t.dtype}, expected {np.dtype(dtype)}")
            if t.shape != shape:
                raise ModelFileError(file, f"tensor {name} has shape {t.shape}, the manifest implies {shape}")
        w, bias = tensors[f"layer{i}.weight"], tensors[f"layer{i}.bias"]
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(bias))):
            raise ModelFileError(file, f"layer {i} holds NaN or infinite weights or biases")
        if masks:
            m = tensors[f"layer{i}.mask"]
            if not np.all((m == 0) | (m == 1)):
                raise ModelFileError(file, f"tensor layer{i}.mask holds values other than 0 and 1")
            if np.any(w[m == 0] != 0):
                raise ModelFileError(file, f"layer {i} has non-zero weights where its mask is 0")
            ms.append(m.astype(bool))
        ws.append(w)
        bs.append(bias)
    try:
        return EnsembleWeights(arch, tuple(ws), tuple(bs), tuple(ms) if masks else None)
    except ValueError as exc:
        raise ModelFileError(file, str(exc)) from None


def _as_bytes(data: Any, name: str, file: Path, cap: int) -> bytes:
    """``data`` (bytes-like) as bytes of at most ``cap``; ValueError for another type, ModelFileError if too big."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"{name} must be bytes, got {type(data).__name__}")
    if len(data) > cap:
        raise ModelFileError(file, f"is {len(data)} bytes; at most {cap} are allowed")
    return bytes(data)


def check_manifest(manifest: bytes, file: Path) -> dict[str, Any]:
    """The manifest document of ``manifest``'s bytes once parsed and its fields checked (as :func:`check_files`
    checks them); :class:`ModelFileError` naming ``file`` and the problem otherwise."""
    doc = _parse_manifest(manifest, file)
    _check_manifest(doc, file)
    return doc


def check_files(
    manifest: Any, weights: Any, manifest_file: Path, weights_file: Path
) -> tuple[dict[str, Any], Surrogate]:
    """Validate a model's two files' bytes; the manifest document and the surrogate they describe.

    ``manifest_file`` and ``weights_file`` name the files in the errors (:class:`ModelFileError`); a value that
    is not bytes is a ``ValueError`` naming the argument.
    """
    raw_manifest = _as_bytes(manifest, "manifest", manifest_file, MAX_MANIFEST_BYTES)
    raw_weights = _as_bytes(weights, "weights", weights_file, MAX_WEIGHTS_BYTES)
    doc = _parse_manifest(raw_manifest, manifest_file)
    arch, norm, envelope = _check_manifest(doc, manifest_file)
    tensors = _read_tensors(raw_weights, weights_file, doc)
    ensemble = _check_tensors(tensors, arch, doc["n_members"], doc["masks"], weights_file)
    if doc["nonzero_weights"] != nonzero_summary(ensemble):
        raise ModelFileError(manifest_file, "nonzero_weights do not match the weights file")
    try:
        surrogate = Surrogate(ensemble, norm, doc["prior"], envelope=envelope)
    except ValueError as exc:
        raise ModelFileError(manifest_file, str(exc)) from None
    return doc, surrogate
