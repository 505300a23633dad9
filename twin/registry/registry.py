"""The twin's model registry: versions and aliases over a :class:`~twin.registry.store.ModelStore`, loaded models in
memory, atomic hot swap, rollback, and a stream of changes.

How a swap stays safe:

- A version is loaded and validated before anything points at it: the model files pass
  :func:`identification.modelfile.load_model` (untrusted input, no pickle), and a rollout from a fixed nominal
  state must stay finite and plausible for ``smoke_horizon`` steps (and, where the rollout engine is not the
  reference :meth:`Surrogate.simulate`, agree with it). An upload is validated in a staging directory and only then
  renamed into place; a version that fails never becomes active, and the old one keeps serving.
- Every change (registration, alias move, rollback) happens under one lock, in order: write the new state file
  atomically, then replace the in-memory state and the table of active models (a new dict, swapped in one
  assignment), then publish the events. Predictions never take that lock: they read the active table once and
  keep the :class:`ServedModel` they got, so a call in flight finishes on the version it started with.
- The targets of every alias, the last ``keep_previous`` targets of each alias (instant rollback) and
  ``cache_size`` further versions (least recently used) stay loaded.

Errors are :class:`RegistryError` subclasses whose message is fit for a client: it names the model, version or
alias and the problem, never a server path.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from identification.metrics import jacobian_dependency, path_dependency, structure_scores
from identification.modelfile import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_WEIGHTS_BYTES,
    WEIGHTS_NAME,
    LoadedModel,
    ModelFileError,
    load_model,
)
from identification.rollout import NumpyRolloutEngine, RolloutEngine, make_rollout_engine
from identification.surrogate import Surrogate
from plant.engine import CompiledEngineError
from plant.signals import N_INPUTS, N_STATES, STATES
from twin.registry.store import (
    ModelRecord,
    ModelStore,
    StoreState,
    VersionRecord,
    check_alias,
    check_name,
    utc_now,
)

__all__ = [
    "DEFAULT_ALIAS",
    "JACOBIAN_POINTS",
    "JACOBIAN_REL_THRESHOLD",
    "MAX_DESCRIPTION",
    "NOMINAL_INPUT",
    "NOMINAL_STATE",
    "WEIGHT_THRESHOLD",
    "Conflict",
    "Dependency",
    "EventType",
    "Explanation",
    "InvalidRequest",
    "LayerStats",
    "ModelRegistry",
    "NotFound",
    "NotServable",
    "RegistryClosed",
    "RegistryError",
    "RegistryEvent",
    "Engine",
    "ServedModel",
    "TooManyWatchers",
    "WatchClosed",
    "Watcher",
    "explain",
    "validate_model",
]

log = logging.getLogger(__name__)

DEFAULT_ALIAS = "champion"
"""The alias a request means when it names neither a version nor an alias."""

MAX_DESCRIPTION = 1000
WEIGHT_THRESHOLD = 1e-2
"""``|w|`` above which a weight counts in the explanation's thresholded figures (the pruning threshold)."""
JACOBIAN_POINTS = 256
JACOBIAN_REL_THRESHOLD = 1e-2
_JACOBIAN_SEED = 20240601

_bath = 13_750.0 / (1.0 - 0.03 - 0.11)
NOMINAL_STATE = np.array([3260.0, 0.03 * _bath, 0.11 * _bath, 13_750.0, 9875.0, 975.0, 820.0, 582.0])
"""(8,) the state every version's smoke rollout starts from: mid-range of the spec (3 % alumina, 11 % AlF3)."""
NOMINAL_INPUT = np.array([0.024, 140_000.0, 0.0, 0.0, 0.05])
"""(5,) the input held over the smoke rollout: consumption-level alumina feed, 140 kA, ACD 5 cm."""
_STATE_SCALE = np.array([s.high - s.low for s in STATES])
_SMOKE_LIMIT = 1e3  # a smoke rollout further than this many typical ranges from the nominal state diverges
_CONFORMANCE_RTOL = 1e-6  # engine vs reference rollout, relative to each state's typical range


class RegistryError(Exception):
    """A refused registry operation; ``str(exc)`` is the client-facing message."""


class InvalidRequest(RegistryError):
    """Malformed names or arguments, or a refused upload (INVALID_ARGUMENT)."""


class NotFound(RegistryError, LookupError):
    """Unknown model, version or alias (NOT_FOUND)."""


class NotServable(RegistryError):
    """The version exists but cannot serve: its files fail validation, or nothing to roll back to
    (FAILED_PRECONDITION)."""


class Conflict(RegistryError):
    """A compare-and-set alias move whose expectation no longer holds (ABORTED)."""


class TooManyWatchers(RegistryError):
    """All Watch slots are taken (RESOURCE_EXHAUSTED)."""


class RegistryClosed(RegistryError):
    """The registry is shutting down (UNAVAILABLE)."""


class WatchClosed(Exception):
    """The watcher was closed (client gone or server stopping)."""


class ModelRejected(Exception):
    """A model that fails validation; ``problem`` is fit for a client."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


Engine = RolloutEngine | NumpyRolloutEngine
"""What rolls a surrogate out: ``simulate(x0 (B, 8), u (B, H, 5)) -> (M, B, H + 1, 8)``."""


def _engine_for(surrogate: Surrogate) -> Engine:
    """The fastest correct rollout engine here (compiled where a C compiler is found, else numpy)."""
    return make_rollout_engine(surrogate, "auto")


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


# ---------------------------------------------------------------------------------------------------------------
# Served models and their explanation


@dataclass(frozen=True)
class LayerStats:
    """Weights of one layer, summed over the members."""

    n_in: int
    n_out: int
    total: int
    nonzero: int
    above_threshold: int


@dataclass(frozen=True)
class Dependency:
    """Share of members (0..1) whose derivative of state i depends on input j, ``(8, 13)``, with its structure
    scores (entries used by at least half the members, against the true structure)."""

    share: np.ndarray  # (8, 13)
    scores: dict[str, float]

    @classmethod
    def of(cls, dependency: np.ndarray) -> Dependency:
        share = np.asarray(dependency, dtype=np.float64).mean(axis=0)  # (M, 8, 13) -> (8, 13)
        return cls(share, structure_scores(share >= 0.5))


@dataclass(frozen=True)
class Explanation:
    """Why a model predicts what it does: sparsity per layer, input-output dependency three ways, and the
    manifest's metrics and provenance."""

    layers: tuple[LayerStats, ...]
    weight_threshold: float
    path: Dependency
    thresholded_path: Dependency
    jacobian: Dependency
    jacobian_points: int
    jacobian_rel_threshold: float
    metrics: dict[str, Any] | None
    provenance: dict[str, Any]


def explain(loaded: LoadedModel) -> Explanation:
    """The :class:`Explanation` of a loaded model."""
    weights = loaded.surrogate.weights
    m = weights.n_members
    layers = tuple(
        LayerStats(
            a,
            b,
            a * b * m,
            int(np.count_nonzero(w)),
            int(np.count_nonzero(np.abs(w) > WEIGHT_THRESHOLD)),
        )
        for (a, b), w in zip(weights.architecture.layer_shapes, weights.weights, strict=True)
    )
    z = np.random.default_rng(_JACOBIAN_SEED).standard_normal((JACOBIAN_POINTS, N_STATES + N_INPUTS))
    jac, _ = jacobian_dependency(weights, z, JACOBIAN_REL_THRESHOLD)
    return Explanation(
        layers=layers,
        weight_threshold=WEIGHT_THRESHOLD,
        path=Dependency.of(path_dependency(weights, 0.0)),
        thresholded_path=Dependency.of(path_dependency(weights, WEIGHT_THRESHOLD)),
        jacobian=Dependency.of(jac),
        jacobian_points=JACOBIAN_POINTS,
        jacobian_rel_threshold=JACOBIAN_REL_THRESHOLD,
        metrics=loaded.metrics,
        provenance=loaded.provenance,
    )


@dataclass(frozen=True, eq=False)
class ServedModel:
    """One validated version, ready to roll out; immutable, so a call keeps the version it started with.

    ``manifest_bytes`` and ``weights_bytes`` are the files exactly as validated (what ExportModel sends).
    """

    name: str
    version: int
    loaded: LoadedModel
    engine: Engine
    manifest_bytes: bytes
    weights_bytes: bytes

    @property
    def surrogate(self) -> Surrogate:
        return self.loaded.surrogate

    @property
    def n_members(self) -> int:
        return self.loaded.surrogate.n_members

    @property
    def dt(self) -> float:
        return self.loaded.surrogate.dt

    def rollout(self, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Every member's free run from ``x0`` ``(B, 8)`` under ``u`` ``(B, H, 5)``: ``(M, B, H + 1, 8)``."""
        return self.engine.simulate(x0, u)

    @functools.cached_property
    def explanation(self) -> Explanation:
        """Computed on first use, then kept."""
        return explain(self.loaded)


def validate_model(
    loaded: LoadedModel, smoke_horizon: int, engine_for: Callable[[Surrogate], Engine] = _engine_for
) -> Engine:
    """The rollout engine of a model that passes the smoke test; ``ModelRejected`` otherwise.

    The smoke test rolls every member out for ``smoke_horizon`` steps from :data:`NOMINAL_STATE` under
    :data:`NOMINAL_INPUT`: the result must have the right shape, be finite and stay within 1000 typical ranges
    of each state from the nominal state and, for an engine other than the numpy reference
    (:meth:`Surrogate.simulate`), agree with that reference to ``1e-6`` of each state's typical range.
    """
    surrogate = loaded.surrogate
    try:
        engine = engine_for(surrogate)
    except CompiledEngineError as exc:
        log.error("the rollout engine cannot be built: %s", exc)
        raise ModelRejected("the rollout engine this server is configured with is unavailable here") from None
    x0 = NOMINAL_STATE[None, :]  # (1, 8)
    u = np.broadcast_to(NOMINAL_INPUT, (1, smoke_horizon, N_INPUTS)).copy()  # (1, H, 5)
    try:
        out = np.asarray(engine.simulate(x0, u))
    except (ValueError, ArithmeticError) as exc:
        raise ModelRejected(f"its rollout from the nominal state fails ({str(exc)[:200]})") from None
    expected = (surrogate.n_members, 1, smoke_horizon + 1, N_STATES)
    if out.shape != expected:
        raise ModelRejected(f"its rollout has shape {out.shape}, expected {expected}")
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(out - NOMINAL_STATE) <= _SMOKE_LIMIT * _STATE_SCALE)  # NaN compares False: bad
    if bad.any():
        member, _, step, i = (int(v) for v in np.argwhere(bad)[0])
        raise ModelRejected(
            f"its rollout from the nominal state diverges: member {member} reaches {STATES[i].name} = "
            f"{out[member, 0, step, i]:.3g} {STATES[i].unit} at step {step} of {smoke_horizon}"
        )
    if not isinstance(engine, NumpyRolloutEngine):
        ref = surrogate.simulate(x0, u)
        err = float(np.max(np.abs(out - ref) / _STATE_SCALE))
        if not err <= _CONFORMANCE_RTOL:
            raise ModelRejected(f"the rollout engine disagrees with the reference rollout (relative error {err:.2e})")
    return engine


# ---------------------------------------------------------------------------------------------------------------
# Events and watchers


class EventType(enum.Enum):
    """Kinds of registry events (numbers as ``alutwin.v1.RegistryEventType``)."""

    SNAPSHOT = 1
    VERSION_REGISTERED = 2
    ALIAS_MOVED = 3
    ROLLED_BACK = 4


@dataclass(frozen=True)
class RegistryEvent:
    """One change of the registry (or, for SNAPSHOT, the whole state at ``revision``)."""

    revision: int
    type: EventType
    name: str = ""
    version: int = 0
    alias: str = ""
    previous_version: int = 0
    time_ms: int = 0
    state: StoreState | None = None  # SNAPSHOT only


class Watcher:
    """One Watch stream's bounded queue of events. When it overflows, the queued events are replaced by a
    fresh snapshot at the next :meth:`get`, and events up to that snapshot's revision are skipped."""

    def __init__(self, name: str, maxlen: int, snapshot: Callable[[], RegistryEvent]) -> None:
        self.name = name
        self._maxlen = maxlen
        self._snapshot = snapshot
        self._queue: deque[RegistryEvent] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._resync = True  # the first message is a snapshot
        self.resyncs = 0

    def offer(self, event: RegistryEvent) -> None:
        if self.name and event.type is not EventType.SNAPSHOT and event.name != self.name:
            return
        with self._cond:
            if self._closed:
                return
            if len(self._queue) >= self._maxlen:
                self._queue.clear()
                self._resync = True
                self.resyncs += 1
            else:
                self._queue.append(event)
            self._cond.notify_all()

    def get(self, timeout: float) -> RegistryEvent | None:
        """The next event, or None after ``timeout`` s; WatchClosed once closed."""
        with self._cond:
            if not self._queue and not self._resync and not self._closed:
                self._cond.wait(timeout)
            if self._closed:
                raise WatchClosed
            resync, self._resync = self._resync, False
            if not resync:
                return self._queue.popleft() if self._queue else None
        snap = self._snapshot()  # takes the registry's lock: never while holding our own
        with self._cond:
            while self._queue and self._queue[0].revision <= snap.revision:
                self._queue.popleft()
        return snap

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()


# ---------------------------------------------------------------------------------------------------------------
# The registry


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
        Makes the rollout engine of a surrogate (default: the surrogate's own ``simulate``).
    on_change : callable, optional
        Called after every change (and once at start) with no arguments.
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
        engine_for: Callable[[Surrogate], Engine] = _engine_for,
        on_change: Callable[[], None] | None = None,
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
        self._state = store.read_state()
        store.write_state(self._state)  # the reconciled state
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
            rec = self.record(name)
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
            return RegistryEvent(self._state.revision, EventType.SNAPSHOT, time_ms=_now_ms(), state=self._state)

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
        staging = self.store.stage(manifest, weights)
        try:
            try:
                loaded = load_model(staging)
                engine = validate_model(loaded, self.smoke_horizon, self._engine_for)
            except ModelFileError as exc:
                raise InvalidRequest(f"model refused: {_problem(exc)}") from None
            except ModelRejected as exc:
                raise InvalidRequest(f"model refused: {exc.problem}") from None
            with self._write_lock:
                self._check_open()
                state = self._state
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
        rec = self.record(name)
        if version not in rec.versions:
            raise NotFound(f"model {name!r} has no version {version}; its versions are {_listing(rec.versions)}")
        served = self._get_or_load(name, version)
        with self._write_lock:
            self._check_open()
            state = self._state
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
            rec = self.record(name)
            if alias not in rec.aliases:
                raise NotFound(f"model {name!r} has no alias {alias!r}; its aliases are {_listing(rec.aliases)}")
            past = rec.history.get(alias, ())
            if not past:
                raise NotServable(f"alias {alias!r} of model {name!r} has no earlier version to roll back to")
            try:
                served = self._get_or_load(name, past[-1])
            except NotServable as exc:
                raise NotServable(f"cannot roll back alias {alias!r} of model {name!r}: {exc}") from None
            with self._write_lock:
                self._check_open()
                state = self._state
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
        """End every watcher, refuse further changes and release the store."""
        self.end_watches()
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
        self.store.close()

    # -- internals ---------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryClosed("the twin is shutting down")

    def _commit(self, state: StoreState, events: list[RegistryEvent], served: ServedModel) -> None:
        """Write ``state``, then make it (and ``served``) current, then publish ``events``. Under the write lock."""
        self.store.write_state(state)  # raises before anything changed in memory
        self._cache_put(served)
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
            rec = self.record(name)
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
        try:
            loaded = load_model(self.store.version_dir(name, version))
        except ModelFileError as exc:
            raise ModelRejected(_problem(exc)) from None
        try:
            manifest, weights = self.store.read_files(name, version, MAX_WEIGHTS_BYTES)
            same = json.loads(manifest) == loaded.manifest
        except (OSError, ValueError):
            raise ModelRejected("its files cannot be read") from None
        if not same or hashlib.sha256(weights).hexdigest() != loaded.manifest["weights"]["sha256"]:
            raise ModelRejected("its files changed while it was being loaded")
        engine = validate_model(loaded, self.smoke_horizon, self._engine_for)
        return ServedModel(name, version, loaded, engine, manifest, weights)
