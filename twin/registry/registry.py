"""The twin's model registry: versions and aliases over a :class:`~twin.registry.store.ModelStore`, loaded models in
memory, atomic hot swap, rollback, and a stream of changes.

How a swap stays safe:

- A version is loaded and validated before anything points at it: the model files pass
  :func:`identification.modelfile.load_model_bytes` (untrusted input, no pickle), and a rollout from a fixed nominal
  state must stay finite and plausible for ``smoke_horizon`` steps (and, where the rollout engine is not the
  reference :meth:`Surrogate.simulate`, agree with it: :func:`~twin.registry.served.validate_model`). An upload
  is validated from its bytes, then written to a staging directory and renamed into place; a version that
  fails never reaches the disk nor becomes active, and the old one keeps serving.
- Every change (registration, alias move, rollback) happens under one lock, in order: write the new state file
  atomically, then replace the in-memory state and the table of active models (a new dict, swapped in one
  assignment), then publish the events. Predictions never take that lock: they read the active table once and
  keep the :class:`~twin.registry.served.ServedModel` they got, so a call in flight finishes on the version it
  started with.
- Replicas: several processes may serve one store. A change takes the store's exclusive file lock, re-reads the
  state under it (:meth:`ModelRegistry.sync`) and writes before letting go; every ``poll_s`` seconds each
  replica compares the state file's signature (inode, mtime, size) and, when it changed, loads the new alias
  targets first and then swaps them in like a local change, with the events for its watchers. A change made
  through one replica is served by every other within ``poll_s`` plus the time to load the new version; a
  request naming a version or model a replica does not know yet makes it look at once.
- The targets of every alias, the last ``keep_previous`` targets of each alias (instant rollback) and
  ``cache_size`` further versions (least recently used) stay loaded.

Errors are :class:`~twin.registry.errors.RegistryError` subclasses whose message is fit for a client: it names the
model, version or alias and the problem, never a server path.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alutwin.fileio import utc_now
from identification.modelfile import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_WEIGHTS_BYTES,
    WEIGHTS_NAME,
    ModelFileError,
    load_model_bytes,
)
from identification.surrogate import Surrogate
from twin.registry.errors import (
    Conflict,
    InvalidRequest,
    ModelRejected,
    NotFound,
    NotServable,
    RegistryClosed,
    TooManyWatchers,
)
from twin.registry.replicas import StorePoller, events_between
from twin.registry.served import Engine, ServedModel, default_engine, validate_model
from twin.registry.store import (
    ModelRecord,
    ModelStore,
    StoreState,
    VersionRecord,
    check_alias,
    check_name,
)
from twin.registry.watch import Watcher
from twin.results import MAX_DESCRIPTION, EventType, ModelSummary, RegistryEvent

__all__ = ["DEFAULT_ALIAS", "MAX_DESCRIPTION", "ModelRegistry", "model_summaries"]

log = logging.getLogger(__name__)

DEFAULT_ALIAS = "champion"
"""The alias a request means when it names neither a version nor an alias."""


def _arg(check: Callable[[Any], str], value: Any) -> str:
    try:
        return check(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def _problem(exc: ModelFileError) -> str:
    """A model file's problem for a client: which of the two files, never where it is."""
    file = Path(exc.path).name
    return f"{file}: {exc.problem}" if file in (MANIFEST_NAME, WEIGHTS_NAME) else exc.problem


def _listing(items: Any, limit: int = 20) -> str:
    items = list(items)
    text = ", ".join(str(i) for i in items[:limit])
    return f"[{text}{', ...' if len(items) > limit else ''}]"


def model_summaries(state: StoreState) -> tuple[ModelSummary, ...]:
    """Every model of ``state`` as a :class:`~twin.results.ModelSummary`."""
    return tuple(
        ModelSummary(
            name,
            {v: (r.kind, r.registered, r.description) for v, r in rec.versions.items()},
            dict(rec.aliases),
        )
        for name, rec in state.models.items()
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


class ModelRegistry:
    """Versions and aliases of the models in a store, with the loaded models that serve them.

    Parameters
    ----------
    store : ModelStore
        Where the models live (owned by this registry from now on; :meth:`close` releases it).
    keep_previous : int
        Previous targets of each alias kept loaded (instant rollback).
    cache_size : int
        Further loaded versions kept, least recently used dropped first.
    smoke_horizon : int
        Steps of the validation rollout.
    max_upload_bytes : int
        Largest weights file :meth:`register` accepts.
    max_watchers, watch_queue_size : int
        Open watchers at once, and events each buffers.
    engine_for : callable, optional
        Makes the rollout engine of a surrogate (default :func:`~twin.registry.served.default_engine`).
    on_change : callable, optional
        Called after every change (and once at start) with no arguments.
    poll_s : float, optional
        Seconds between two looks at the store for changes by other processes (None: no polling thread;
        changes by others are still seen by every change made here and by requests for unknown versions).
    """

    def __init__(
        self,
        store: ModelStore,
        *,
        keep_previous: int = 3,
        cache_size: int = 4,
        smoke_horizon: int = 60,
        max_upload_bytes: int = MAX_WEIGHTS_BYTES,
        max_watchers: int = 8,
        watch_queue_size: int = 256,
        engine_for: Callable[[Surrogate], Engine] = default_engine,
        on_change: Callable[[], None] | None = None,
        poll_s: float | None = None,
    ) -> None:
        self.store = store
        self.keep_previous = keep_previous
        self.cache_size = cache_size
        self.smoke_horizon = smoke_horizon
        self.max_upload_bytes = min(max_upload_bytes, MAX_WEIGHTS_BYTES)
        self.max_watchers = max_watchers
        self.watch_queue_size = watch_queue_size
        self._engine_for = engine_for
        self._on_change = on_change
        self._write_lock = threading.RLock()  # serialises every change
        self._cache_lock = threading.Lock()
        self._load_locks: dict[tuple[str, int], threading.Lock] = {}
        self._loaded: OrderedDict[tuple[str, int], ServedModel] = OrderedDict()
        self._broken: dict[tuple[str, int], str] = {}
        self._watchers: set[Watcher] = set()
        self._watching = True
        self._closed = False
        self._sync_lock = threading.Lock()
        with store.locked():
            self._state = store.read_state()
            store.write_state(self._state)  # the reconciled state
            self._signature = store.state_signature()
        self._active: dict[tuple[str, str], ServedModel] = {}
        for key in sorted(self._pinned(self._state)):
            try:
                self._cache_put(self._load(*key))
            except ModelRejected as exc:
                self._broken[key] = exc.problem
                log.warning("model %s version %d cannot be served: %s", key[0], key[1], exc.problem)
        self._active = self._active_of(self._state)
        if on_change is not None:
            on_change()
        self._poller = StorePoller(self.sync, poll_s) if poll_s is not None else None

    # -- reading -----------------------------------------------------------------------------------------------

    @property
    def state(self) -> StoreState:
        """The present state (an immutable snapshot)."""
        return self._state

    @property
    def closed(self) -> bool:
        return self._closed

    def servable(self) -> bool:
        """True when at least one alias of one model can serve."""
        return bool(self._active)

    def active(self) -> list[tuple[str, str, int]]:
        """``(model, alias, version)`` of every alias that serves now."""
        return [(name, alias, s.version) for (name, alias), s in sorted(self._active.items())]

    def is_loaded(self, name: str, version: int) -> bool:
        with self._cache_lock:
            return (name, version) in self._loaded

    def record(self, name: str) -> ModelRecord:
        """The record of model ``name``; NotFound (listing the models) if there is none."""
        name = _arg(check_name, name)
        rec = self._state.models.get(name)
        if rec is None:
            raise NotFound(f"no model named {name!r}; the registry has {_listing(self._state.models)}")
        return rec

    def resolve(self, name: str, version: int | None = None, alias: str | None = None) -> ServedModel:
        """The served model that ``name`` plus ``version`` or ``alias`` (neither: ``champion``) means now.

        Raises
        ------
        InvalidRequest, NotFound, NotServable
        """
        if version is None:
            alias = alias or DEFAULT_ALIAS
            served = self._active.get((name, alias))  # the hot path: one dict read, no lock
            if served is not None:
                return served
            alias = _arg(check_alias, alias)
            rec = self._record_fresh(name)
            if alias not in rec.aliases:
                raise NotFound(f"model {name!r} has no alias {alias!r}; its aliases are {_listing(rec.aliases)}")
            target = rec.aliases[alias]
            try:
                return self._get_or_load(name, target)
            except NotServable as exc:
                raise NotServable(f"alias {alias!r} of model {name!r}: {exc}") from None
        with self._cache_lock:
            served = self._loaded.get((name, version))
            if served is not None:
                self._loaded.move_to_end((name, version))
                return served
        return self._get_or_load(name, version)

    def snapshot(self) -> RegistryEvent:
        """A SNAPSHOT event of the present state."""
        with self._write_lock:
            state = self._state
        return RegistryEvent(state.revision, EventType.SNAPSHOT, time_ms=_now_ms(), models=model_summaries(state))

    # -- changes -----------------------------------------------------------------------------------------------

    def register(
        self, name: str, manifest: bytes, weights: bytes, *, set_alias: str = "", description: str = ""
    ) -> tuple[ServedModel, int]:
        """Validate and store a new version of ``name`` (a new name creates the model); optionally point
        ``set_alias`` at it. Returns the served version and the registry revision after the change.

        Raises
        ------
        InvalidRequest
            A bad name, alias, description or size, or a model that fails validation (why, without paths).
        RegistryClosed
        """
        self._check_open()
        name = _arg(check_name, name)
        if set_alias:
            _arg(check_alias, set_alias)
        if len(description) > MAX_DESCRIPTION:
            raise InvalidRequest(f"description has {len(description)} characters; at most {MAX_DESCRIPTION}")
        for what, data, cap in (
            ("manifest_json", manifest, MAX_MANIFEST_BYTES),
            ("weights", weights, self.max_upload_bytes),
        ):
            if not data:
                raise InvalidRequest(f"{what} is empty")
            if len(data) > cap:
                raise InvalidRequest(f"{what} is {len(data)} bytes; this server accepts at most {cap}")
        try:  # validated from the uploaded bytes: a refused upload never touches the disk
            loaded = load_model_bytes(manifest, weights)
            engine = validate_model(loaded, self.smoke_horizon, self._engine_for)
        except ModelFileError as exc:
            raise InvalidRequest(f"model refused: {_problem(exc)}") from None
        except ModelRejected as exc:
            raise InvalidRequest(f"model refused: {exc.problem}") from None
        staging = self.store.stage(manifest, weights)
        try:
            with self._write_lock, self.store.locked():
                self._check_open()
                state = self._sync_locked()
                rec = state.models.get(name, ModelRecord())
                version = max(rec.next_version, max(self.store.versions_on_disk(name), default=0) + 1)
                target = self.store.commit(staging, name, version)
                served = ServedModel(name, version, dataclasses.replace(loaded, path=target), engine, manifest, weights)
                vrec = VersionRecord(version, loaded.kind, utc_now(), description)
                rec = dataclasses.replace(rec, next_version=version + 1, versions={**rec.versions, version: vrec})
                revision = state.revision + 1
                now = _now_ms()
                events = [RegistryEvent(revision, EventType.VERSION_REGISTERED, name, version, time_ms=now)]
                if set_alias:
                    previous = rec.aliases.get(set_alias, 0)
                    rec = rec.with_alias(set_alias, version)
                    revision += 1
                    events.append(
                        RegistryEvent(revision, EventType.ALIAS_MOVED, name, version, set_alias, previous, now)
                    )
                self._commit(state.with_model(name, rec, revision), events, served)
                log.info("registered model %s version %d (%s)", name, version, loaded.kind)
                return served, revision
        finally:
            self.store.discard(staging)

    def set_alias(self, name: str, alias: str, version: int, expected_version: int | None = None) -> tuple[int, int]:
        """Point ``alias`` of ``name`` at ``version`` (loaded and validated first). Returns the previous target
        (0: none) and the registry revision.

        ``expected_version`` (0: the alias must not exist yet) makes the move a compare-and-set: Conflict when
        the alias points elsewhere.
        """
        self._check_open()
        alias = _arg(check_alias, alias)
        rec = self._record_fresh(name, version)
        if version not in rec.versions:
            raise NotFound(f"model {name!r} has no version {version}; its versions are {_listing(rec.versions)}")
        served = self._get_or_load(name, version)
        with self._write_lock, self.store.locked():
            self._check_open()
            state = self._sync_locked()
            rec = state.models[name]
            current = rec.aliases.get(alias, 0)
            if expected_version is not None and current != expected_version:
                now = f"version {current}" if current else "nothing"
                raise Conflict(
                    f"alias {alias!r} of model {name!r} points at {now}, not at the expected "
                    f"{'nothing' if expected_version == 0 else f'version {expected_version}'}; nothing moved"
                )
            if current == version:
                return current, state.revision
            revision = state.revision + 1
            event = RegistryEvent(revision, EventType.ALIAS_MOVED, name, version, alias, current, _now_ms())
            self._commit(state.with_model(name, rec.with_alias(alias, version), revision), [event], served)
            log.info("alias %s of model %s: version %d -> %d", alias, name, current, version)
            return current, revision

    def rollback(self, name: str, alias: str = DEFAULT_ALIAS) -> tuple[int, int, int]:
        """Move ``alias`` of ``name`` back to its previous target. Returns ``(version now, version left,
        revision)``; NotServable when there is no previous target or it cannot be served."""
        self._check_open()
        alias = _arg(check_alias, alias or DEFAULT_ALIAS)
        for _ in range(3):
            rec = self._record_fresh(name)
            if alias not in rec.aliases:
                raise NotFound(f"model {name!r} has no alias {alias!r}; its aliases are {_listing(rec.aliases)}")
            past = rec.history.get(alias, ())
            if not past:
                raise NotServable(f"alias {alias!r} of model {name!r} has no earlier version to roll back to")
            try:
                served = self._get_or_load(name, past[-1])
            except NotServable as exc:
                raise NotServable(f"cannot roll back alias {alias!r} of model {name!r}: {exc}") from None
            with self._write_lock, self.store.locked():
                self._check_open()
                state = self._sync_locked()
                if state.models.get(name) is not rec:
                    continue  # changed meanwhile: look again
                current = rec.aliases[alias]
                revision = state.revision + 1
                event = RegistryEvent(revision, EventType.ROLLED_BACK, name, past[-1], alias, current, _now_ms())
                self._commit(state.with_model(name, rec.rolled_back(alias), revision), [event], served)
                log.info("alias %s of model %s rolled back: version %d -> %d", alias, name, current, past[-1])
                return past[-1], current, revision
        raise Conflict(f"the registry kept changing while rolling back model {name!r}; try again")

    def watch(self, name: str = "") -> Watcher:
        """A new watcher (its first event is a snapshot); TooManyWatchers or RegistryClosed if refused."""
        if name:
            _arg(check_name, name)
        with self._write_lock:
            self._check_open()
            if not self._watching:
                raise RegistryClosed("the twin is shutting down")
            if len(self._watchers) >= self.max_watchers:
                raise TooManyWatchers(f"{len(self._watchers)} Watch streams are open, the most this server allows")
            watcher = Watcher(name, self.watch_queue_size, self.snapshot)
            self._watchers.add(watcher)
            return watcher

    def unwatch(self, watcher: Watcher) -> None:
        watcher.close()
        with self._write_lock:
            self._watchers.discard(watcher)

    def end_watches(self) -> None:
        """End every open watcher (their streams finish cleanly) and refuse new ones."""
        with self._write_lock:
            self._watching = False
            watchers = list(self._watchers)
            self._watchers.clear()
        for w in watchers:
            w.close()

    def close(self) -> None:
        """Stop polling, end every watcher, refuse further changes and release the store."""
        if self._poller is not None:
            self._poller.stop()
        self.end_watches()
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
        self.store.close()

    # -- other replicas ----------------------------------------------------------------------------------------

    def sync(self) -> bool:
        """Take in the changes other processes made to the store: when the state file changed, read it (under
        the store's shared lock), load the versions it pins, then swap it in like a local change (events for the
        watchers). Also loads pinned versions that are not loaded yet. True when the state changed."""
        with self._sync_lock:
            if self._closed:
                return False
            signature = self.store.state_signature()
            new: StoreState | None = None
            if signature != self._signature:
                with self.store.locked(shared=True):
                    new = self.store.read_state()
                    signature = self.store.state_signature()
            target = new if new is not None and new.revision > self._state.revision else self._state
            missing = self._preload(target)  # outside the write lock: predictions and changes go on
            with self._write_lock:
                if new is not None and new.revision > self._state.revision:
                    self._signature = signature
                    self._adopt(new, events_between(self._state, new, _now_ms()))
                    log.info("registry revision %d taken in from the store", new.revision)
                    return True
                if new is not None and new.revision == self._state.revision:
                    self._signature = signature
                if missing:
                    self._active = self._active_of(self._state)
                    if self._on_change is not None:
                        self._on_change()
            return False

    def _sync_locked(self) -> StoreState:
        """The store's present state, taken in if another process changed it. Under the write lock and the
        store's exclusive lock (so the state read is the one the next write replaces)."""
        signature = self.store.state_signature()
        if signature != self._signature:
            new = self.store.read_state()
            self._signature = signature
            if new.revision != self._state.revision:
                self._adopt(new, events_between(self._state, new, _now_ms()))
        return self._state

    def _record_fresh(self, name: str, version: int | None = None) -> ModelRecord:
        """:meth:`record`, after a :meth:`sync` when the model (or its ``version``) is not known here yet."""
        rec = self._state.models.get(name)
        if rec is None or (version is not None and version not in rec.versions):
            self.sync()
        return self.record(name)

    def _preload(self, state: StoreState) -> bool:
        """Load the versions ``state`` pins that are neither loaded nor refused; True if any was loaded."""
        loaded = False
        for key in sorted(self._pinned(state)):
            with self._cache_lock:
                if key in self._loaded or key in self._broken:
                    continue
            try:
                served = self._load(*key)
            except ModelRejected as exc:
                self._broken[key] = exc.problem
                log.warning("model %s version %d cannot be served: %s", key[0], key[1], exc.problem)
                continue
            except Exception:  # a version another replica is committing right now; the next poll sees it whole
                log.debug("model %s version %d is not readable yet", *key, exc_info=True)
                continue
            self._cache_put(served)
            loaded = True
        return loaded

    # -- internals ---------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryClosed("the twin is shutting down")

    def _commit(self, state: StoreState, events: list[RegistryEvent], served: ServedModel) -> None:
        """Write ``state``, then make it (and ``served``) current, then publish ``events``. Under the write lock."""
        self.store.write_state(state)  # raises before anything changed in memory
        self._signature = self.store.state_signature()
        self._cache_put(served)
        self._adopt(state, events)

    def _adopt(self, state: StoreState, events: list[RegistryEvent]) -> None:
        """Make ``state`` current with the loaded models, then publish ``events``. Under the write lock."""
        self._state = state
        self._active = self._active_of(state)
        self._evict()
        for watcher in list(self._watchers):
            for event in events:
                watcher.offer(event)
        if self._on_change is not None:
            self._on_change()

    def _active_of(self, state: StoreState) -> dict[tuple[str, str], ServedModel]:
        with self._cache_lock:
            return {
                (name, alias): self._loaded[(name, v)]
                for name, rec in state.models.items()
                for alias, v in rec.aliases.items()
                if (name, v) in self._loaded
            }

    def _pinned(self, state: StoreState) -> set[tuple[str, int]]:
        """Versions that must stay loaded: alias targets and the last ``keep_previous`` of each history."""
        keep: set[tuple[str, int]] = set()
        for name, rec in state.models.items():
            keep |= {(name, v) for v in rec.aliases.values()}
            if self.keep_previous:
                for past in rec.history.values():
                    keep |= {(name, v) for v in past[-self.keep_previous :]}
        return keep

    def _cache_put(self, served: ServedModel) -> None:
        key = (served.name, served.version)
        with self._cache_lock:
            self._loaded[key] = served
            self._loaded.move_to_end(key)
        self._broken.pop(key, None)

    def _evict(self) -> None:
        pinned = self._pinned(self._state)
        with self._cache_lock:
            others = [k for k in self._loaded if k not in pinned]  # least recently used first
            for key in others[: max(0, len(others) - self.cache_size)]:
                del self._loaded[key]

    def _get_or_load(self, name: str, version: int) -> ServedModel:
        """The served model of a stored version, loading (and validating) it if needed; NotServable if it fails."""
        key = (name, version)
        with self._cache_lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:  # one load per version at a time
            with self._cache_lock:
                if key in self._loaded:
                    return self._loaded[key]
            rec = self._record_fresh(name, version)
            if version not in rec.versions:
                raise NotFound(f"model {name!r} has no version {version}; its versions are {_listing(rec.versions)}")
            if key in self._broken:  # versions never change: a refused one stays refused
                raise NotServable(f"version {version} of model {name!r} cannot be served: {self._broken[key]}")
            try:
                served = self._load(name, version)
            except ModelRejected as exc:
                self._broken[key] = exc.problem
                log.warning("model %s version %d cannot be served: %s", name, version, exc.problem)
                raise NotServable(f"version {version} of model {name!r} cannot be served: {exc.problem}") from None
            self._cache_put(served)
            self._evict()
            return served

    def _load(self, name: str, version: int) -> ServedModel:
        """Load and validate a stored version; ModelRejected with the problem (no paths) if it fails."""
        try:  # read once: the bytes validated are the bytes served and exported
            manifest, weights = self.store.read_files(name, version)
            loaded = load_model_bytes(manifest, weights, source=self.store.version_dir(name, version))
        except ModelFileError as exc:
            raise ModelRejected(_problem(exc)) from None
        engine = validate_model(loaded, self.smoke_horizon, self._engine_for)
        return ServedModel(name, version, loaded, engine, manifest, weights)
