"""The twin's model store: versioned model directories and the registry's state, on local disk, written atomically.

Layout::

    store/
        registry.json              revision, and per model: next version, version records, aliases, alias history
        models/<name>/<version>/   manifest.json + weights.safetensors (identification.modelfile)
        .staging/                  uploads being written, already validated (a crash's leftovers removed at start)
        .lock                      flock'ed by every change: exclusive to write, shared to read

The registry validates an upload from its bytes first and stages only a valid model: a new version is written
into a staging directory (each file to a temporary name, fsync, rename) and moved into place with one ``rename``
of the directory, followed by an fsync of the parent: a crash leaves either the whole version or none of it.
``registry.json`` is replaced the same way (temporary file, fsync, rename). A version directory that a crash left
without its record is found again at start.

Several twin processes (replicas) may share one store. Every change takes an exclusive ``flock`` on ``.lock``
(:meth:`ModelStore.locked`), re-reads ``registry.json`` under it and writes the new state before it lets go, so
two processes never both create version 3 nor lose each other's alias moves; a reader takes the lock shared and
never sees a version directory before its record. ``flock`` is the standard library's, with no extra package;
it works on local file systems and on NFS (Linux emulates it there with POSIX byte-range locks).

Names of models and aliases are checked against a strict pattern before they touch a path.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeGuard

from alutwin.fileio import fsync_dir, utc_now, write_atomic
from identification.modelfile import MANIFEST_NAME, WEIGHTS_NAME, ModelFileError, read_manifest, read_model_files

__all__ = [
    "ALIAS_PATTERN",
    "NAME_PATTERN",
    "STATE_FORMAT",
    "HISTORY_LIMIT",
    "ModelRecord",
    "ModelStore",
    "StoreError",
    "StoreState",
    "VersionRecord",
    "check_alias",
    "check_name",
]

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
"""Model names: 1 to 64 characters of ``[a-z0-9._-]``, starting with a letter or digit."""
ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9._-]{0,63}")
"""Aliases: 1 to 64 characters of ``[a-z0-9._-]``, starting with a letter."""

STATE_FORMAT = "alutwin-twin-registry"
STATE_NAME = "registry.json"
HISTORY_LIMIT = 100
"""Previous targets remembered per alias (for rollback)."""
_MAX_STATE_BYTES = 64 << 20


class StoreError(Exception):
    """The store cannot be opened or its state file is unreadable (an operator's problem, not a client's)."""


def check_name(name: object) -> str:
    """``name`` if it is a valid model name; ValueError naming the rule otherwise."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"model name {str(name)[:80]!r} is not valid: use 1 to 64 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


def check_alias(alias: object) -> str:
    """``alias`` if it is a valid alias; ValueError naming the rule otherwise."""
    if not isinstance(alias, str) or not ALIAS_PATTERN.fullmatch(alias):
        raise ValueError(
            f"alias {str(alias)[:80]!r} is not valid: use 1 to 64 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter"
        )
    return alias


@dataclass(frozen=True)
class VersionRecord:
    """What the registry remembers of one stored version."""

    version: int
    kind: str
    registered: str  # ISO 8601 UTC
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "registered": self.registered, "description": self.description}


@dataclass(frozen=True)
class ModelRecord:
    """One model: its versions, aliases, and for each alias the targets it had before (oldest first)."""

    next_version: int = 1
    versions: Mapping[int, VersionRecord] = field(default_factory=dict)
    aliases: Mapping[str, int] = field(default_factory=dict)
    history: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", MappingProxyType(dict(sorted(self.versions.items()))))
        object.__setattr__(self, "aliases", MappingProxyType(dict(sorted(self.aliases.items()))))
        object.__setattr__(self, "history", MappingProxyType({k: tuple(v) for k, v in sorted(self.history.items())}))

    def with_alias(self, alias: str, version: int) -> ModelRecord:
        """The record after pointing ``alias`` at ``version`` (its old target joins the history)."""
        history = dict(self.history)
        old = self.aliases.get(alias)
        if old is not None:
            history[alias] = (*history.get(alias, ()), old)[-HISTORY_LIMIT:]
        return dataclasses.replace(self, aliases={**self.aliases, alias: version}, history=history)

    def rolled_back(self, alias: str) -> ModelRecord:
        """The record after moving ``alias`` back to the last target of its history (which it leaves)."""
        past = self.history[alias]
        return dataclasses.replace(
            self, aliases={**self.aliases, alias: past[-1]}, history={**self.history, alias: past[:-1]}
        )


@dataclass(frozen=True)
class StoreState:
    """The registry's state: a revision that grows with every change, and the models."""

    revision: int = 0
    models: Mapping[str, ModelRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", MappingProxyType(dict(sorted(self.models.items()))))

    def with_model(self, name: str, record: ModelRecord, revision: int) -> StoreState:
        return StoreState(revision, {**self.models, name: record})

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "format_version": 1,
            "revision": self.revision,
            "models": {
                name: {
                    "next_version": rec.next_version,
                    "versions": {str(v): r.as_dict() for v, r in rec.versions.items()},
                    "aliases": dict(rec.aliases),
                    "history": {a: list(h) for a, h in rec.history.items()},
                }
                for name, rec in self.models.items()
            },
        }

    @classmethod
    def from_dict(cls, doc: Any) -> StoreState:
        """Parse the state file's document; ValueError naming the first problem."""
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or doc.get("format_version") != 1:
            raise ValueError(f"not a {STATE_FORMAT} document of format_version 1")
        revision = doc.get("revision")
        if not _is_count(revision):
            raise ValueError("revision must be a non-negative integer")
        models = doc.get("models")
        if not isinstance(models, dict):
            raise ValueError("models must be an object")
        out = {}
        for name, m in models.items():
            check_name(name)
            if not isinstance(m, dict) or set(m) != {"next_version", "versions", "aliases", "history"}:
                raise ValueError(f"model {name!r}: expected the keys next_version, versions, aliases, history")
            if not _is_count(m["next_version"]) or m["next_version"] < 1:
                raise ValueError(f"model {name!r}: next_version must be a positive integer")
            versions = {}
            for key, r in _object(m["versions"], name, "versions").items():
                v = _version_key(key, name)
                if not isinstance(r, dict) or set(r) != {"kind", "registered", "description"}:
                    raise ValueError(f"model {name!r}: version {key} needs exactly kind, registered, description")
                if not all(isinstance(r[k], str) for k in r):
                    raise ValueError(f"model {name!r}: version {key} fields must be strings")
                versions[v] = VersionRecord(v, r["kind"], r["registered"], r["description"])
            aliases = {}
            for alias, v in _object(m["aliases"], name, "aliases").items():
                check_alias(alias)
                if not _is_count(v) or v < 1:
                    raise ValueError(f"model {name!r}: alias {alias!r} must point at a positive version")
                aliases[alias] = v
            history = {}
            for alias, past in _object(m["history"], name, "history").items():
                check_alias(alias)
                if not isinstance(past, list) or not all(_is_count(v) and v >= 1 for v in past):
                    raise ValueError(f"model {name!r}: history of {alias!r} must be a list of versions")
                history[alias] = tuple(past)
            out[name] = ModelRecord(m["next_version"], versions, aliases, history)
        return cls(revision, out)


def _is_count(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _object(v: Any, name: str, key: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"model {name!r}: {key} must be an object")
    return v


def _version_key(key: str, name: str) -> int:
    if not key.isdigit() or key.startswith("0"):
        raise ValueError(f"model {name!r}: version key {key!r} is not a positive integer")
    return int(key)


def _read_capped(path: Path, cap: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise ValueError(f"{path.name} is larger than {cap} bytes")
    return data


class ModelStore:
    """A directory of versioned models, shared by any number of processes (changes serialised by
    :meth:`locked`).

    Parameters
    ----------
    root : Path
        The store directory (created if missing).

    Raises
    ------
    StoreError
        It cannot be created or its lock file cannot be opened.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._closed = False
        self._staging: dict[Path, int] = {}  # staging directory -> descriptor holding its flock
        try:
            for d in (self.root, self.root / "models", self.root / ".staging"):
                d.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644))
        except OSError as exc:
            raise StoreError(f"cannot open the model store {self.root}: {exc.strerror}") from None
        for leftover in (self.root / ".staging").iterdir():  # uploads a crash interrupted, not a live replica's
            try:
                fd = os.open(leftover, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # another process is writing it
            finally:
                os.close(fd)
            shutil.rmtree(leftover, ignore_errors=True)

    def close(self) -> None:
        """Mark the store closed (it holds no lock between changes)."""
        self._closed = True

    @contextmanager
    def locked(self, *, shared: bool = False) -> Iterator[None]:
        """Hold the store's lock (``flock`` on ``.lock``) for the block: exclusive for a change, ``shared`` for a
        consistent read. Each call opens its own descriptor, so threads of one process exclude each other too."""
        try:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open the lock of the model store {self.root}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the lock

    def state_signature(self) -> tuple[int, int, int] | None:
        """``(inode, mtime ns, size)`` of ``registry.json`` (None if missing): changes with every write, since a
        write replaces the file. A cheap test for a change by another process."""
        try:
            st = os.stat(self.root / STATE_NAME)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    # -- versions ----------------------------------------------------------------------------------------------

    def version_dir(self, name: str, version: int) -> Path:
        return self.root / "models" / check_name(name) / str(int(version))

    def versions_on_disk(self, name: str) -> list[int]:
        """Versions of ``name`` that have a directory, ascending."""
        d = self.root / "models" / check_name(name)
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit() and p.name[0] != "0")

    def names_on_disk(self) -> list[str]:
        out = []
        for p in sorted((self.root / "models").iterdir()):
            if p.is_dir() and NAME_PATTERN.fullmatch(p.name):
                out.append(p.name)
        return out

    def stage(self, manifest: bytes, weights: bytes) -> Path:
        """Write an upload's two files into a new staging directory (each atomically); returns the directory."""
        staging = Path(tempfile.mkdtemp(dir=self.root / ".staging", prefix="upload-"))
        fd = os.open(staging, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a replica starting meanwhile leaves it alone
        self._staging[staging] = fd
        try:
            write_atomic(staging / WEIGHTS_NAME, weights)
            write_atomic(staging / MANIFEST_NAME, manifest)
            fsync_dir(staging)
        except BaseException:
            self.discard(staging)
            raise
        return staging

    def commit(self, staging: Path, name: str, version: int) -> Path:
        """Move a staged model into place as ``version`` of ``name`` (one directory rename, then fsync)."""
        parent = self.root / "models" / check_name(name)
        parent.mkdir(exist_ok=True)
        target = self.version_dir(name, version)
        os.rename(staging, target)  # fails if the target exists: a version is never overwritten
        self._release(staging)
        fsync_dir(parent)
        fsync_dir(parent.parent)
        return target

    def discard(self, staging: Path) -> None:
        """Remove a staging directory (if still there)."""
        shutil.rmtree(staging, ignore_errors=True)
        self._release(staging)

    def _release(self, staging: Path) -> None:
        fd = self._staging.pop(staging, -1)
        if fd >= 0:
            os.close(fd)

    def read_files(self, name: str, version: int) -> tuple[bytes, bytes]:
        """The manifest and weights bytes of a stored version (:func:`identification.modelfile.read_model_files`:
        size-capped reads of regular files, the manifest checked before the weights are read).

        Raises
        ------
        identification.modelfile.ModelFileError
            Naming the file and the problem (missing, too large, not a regular file, a broken manifest).
        """
        return read_model_files(self.version_dir(name, version))

    def read_kind(self, name: str, version: int) -> str:
        """The ``kind`` in a stored version's manifest, or ``"unknown"`` if the manifest is not a valid one."""
        try:
            return read_manifest(self.version_dir(name, version))["kind"]
        except ModelFileError:
            return "unknown"

    # -- state -------------------------------------------------------------------------------------------------

    def read_state(self) -> StoreState:
        """The registry's state, reconciled with the version directories on disk.

        A version directory without a record (a crash between the rename and the state write) gets one; a record
        or alias whose directory is gone is dropped, with a warning.

        Raises
        ------
        StoreError
            ``registry.json`` exists but is not a valid state file.
        """
        path = self.root / STATE_NAME
        state = StoreState()
        if path.exists():
            try:
                state = StoreState.from_dict(json.loads(_read_capped(path, _MAX_STATE_BYTES)))
            except (OSError, ValueError, RecursionError) as exc:
                raise StoreError(f"the registry state {path} is unreadable: {exc}") from None
        models = dict(state.models)
        for name in sorted(set(models) | set(self.names_on_disk())):
            rec = models.get(name, ModelRecord())
            on_disk = set(self.versions_on_disk(name))
            versions = {v: r for v, r in rec.versions.items() if v in on_disk}
            for v in sorted(set(rec.versions) - on_disk):
                log.warning("model %s version %d is recorded but its directory is gone; dropped", name, v)
            for v in sorted(on_disk - set(rec.versions)):
                log.warning("model %s version %d has no record (interrupted registration); recovered", name, v)
                versions[v] = VersionRecord(v, self.read_kind(name, v), utc_now(), "recovered at start")
            aliases = {a: v for a, v in rec.aliases.items() if v in versions}
            for a in sorted(set(rec.aliases) - set(aliases)):
                log.warning("alias %s of model %s points at a missing version; dropped", a, name)
            history = {a: tuple(v for v in h if v in versions) for a, h in rec.history.items()}
            next_version = max(rec.next_version, max({*on_disk, *rec.versions}, default=0) + 1)  # never reused
            if versions or aliases:
                models[name] = ModelRecord(next_version, versions, aliases, history)
            else:
                models.pop(name, None)
        return StoreState(state.revision, models)

    def write_state(self, state: StoreState) -> None:
        """Replace ``registry.json`` atomically."""
        text = json.dumps(state.as_dict(), indent=1, sort_keys=True).encode("utf-8") + b"\n"
        write_atomic(self.root / STATE_NAME, text)
        fsync_dir(self.root)
