"""Where the MPC's prediction model comes from: one base class with one hook, :meth:`ModelSource.dynamics`.

- :class:`OracleModel`: the true equations (``plant.physics.rk4_step``, the plant's own RK4 of 10 s).
- :class:`SurrogateModel`: a surrogate loaded locally (``identification.modelfile.load_model``), as the CasADi
  export of its ensemble mean (or one member), explicit-Euler steps of the model's ``dt``.
- :class:`TwinModel`: the surrogate the twin serves (``ExportModel``), checked once against the twin's
  ``Predict`` on the same inputs, and followed when the twin's alias (``champion``) moves: a background thread
  watches the registry and fetches the new version; :meth:`TwinModel.refresh`, called by the MPC between
  solves, builds and checks it and only then swaps it in.
"""

from __future__ import annotations

import abc
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casadi as ca
import numpy as np

from controller.problem import MANIPULATED, full_input
from identification.export import to_casadi
from identification.modelfile import LoadedModel, load_model
from identification.surrogate import Surrogate
from plant.excitation import sample_initial_states
from plant.params import DEFAULT_PARAMS, CellParams
from plant.physics import rk4_step
from plant.signals import N_INPUTS, N_STATES, U
from plant.simulator import DT

__all__ = [
    "MODEL_KINDS",
    "ModelMismatch",
    "ModelSource",
    "OracleModel",
    "SurrogateModel",
    "TwinModel",
    "check_against_prediction",
    "known_ranges",
    "make_model",
]

log = logging.getLogger(__name__)

_SQRT3 = math.sqrt(3.0)


class ModelMismatch(RuntimeError):
    """The CasADi model built from the twin's export does not reproduce the twin's own prediction."""


def known_ranges(surrogate: Surrogate) -> dict[str, tuple[float, float]]:
    """The input ranges the surrogate's training data covered, from its normalisation.

    The "aprbs" current and ACD are uniform levels, so their range is ``mean +- sqrt(3) std`` of the features
    (118-155 kA and 0.043-0.057 m for the committed models). The feeds are not uniform (the cell's batch feeds
    plus impulses, 0 to ~22 kg/s), and enter the mass balances linearly; their range is the spec's.

    Returns
    -------
    dict name -> (low, high) for ``"current"`` and ``"acd"``.
    """
    mean, std = surrogate.normalization.feature_mean, surrogate.normalization.feature_std  # (13,)
    out = {}
    for name, idx in (("current", U.CURRENT), ("acd", U.ACD)):
        j = N_STATES + idx
        out[name] = (float(mean[j] - _SQRT3 * std[j]), float(mean[j] + _SQRT3 * std[j]))
    return out


class ModelSource(abc.ABC):
    """A prediction model for the MPC.

    Subclasses implement :meth:`dynamics`; the rest has defaults. ``revision`` counts changes of the model (the
    MPC rebuilds its problem when it changes); :meth:`refresh` applies a pending change and says whether one
    happened.
    """

    name: str = "model"
    dt: float = DT

    @abc.abstractmethod
    def dynamics(self) -> ca.Function:
        """One step of the model: a CasADi ``Function`` ``(x (8, 1), u (5, 1)) -> x_next (8, 1)`` over ``dt``."""

    def input_bounds(self) -> dict[str, tuple[float, float]]:
        """Bounds of the manipulated inputs (by :data:`controller.problem.MANIPULATED` name) for this model."""
        return {m.name: (m.low, m.high) for m in MANIPULATED}

    @property
    def revision(self) -> int:
        return 0

    def refresh(self) -> bool:
        """Apply a pending change of the model; True if the model changed."""
        return False

    def describe(self) -> dict[str, Any]:
        """What the model is, for the report."""
        return {"name": self.name, "dt": self.dt}

    def close(self) -> None:
        """Stop any background work."""
        return None  # nothing to release by default


class OracleModel(ModelSource):
    """The true equations: one RK4 step of ``dt`` (the plant's own discretisation)."""

    def __init__(self, params: CellParams = DEFAULT_PARAMS, dt: float = DT, name: str = "oracle") -> None:
        self.params = params
        self.dt = float(dt)
        self.name = name
        x, u = ca.SX.sym("x", N_STATES), ca.SX.sym("u", N_INPUTS)
        self._f = ca.Function("oracle_step", [x, u], [rk4_step(x, u, self.dt, params)], ["x", "u"], ["x_next"])

    def dynamics(self) -> ca.Function:
        return self._f

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "oracle", "dt": self.dt, "discretisation": "rk4"}


def _casadi_step(surrogate: Surrogate, member: int | None) -> ca.Function:
    if member is None:
        return to_casadi(surrogate, mean=True, what="step", name="surrogate_mean_step")
    return to_casadi(surrogate, member=member, what="step", name=f"surrogate_member{member}_step")


def _surrogate_bounds(surrogate: Surrogate) -> dict[str, tuple[float, float]]:
    bounds = {m.name: (m.low, m.high) for m in MANIPULATED}
    lo, hi = known_ranges(surrogate)["acd"]
    spec = bounds["acd"]
    bounds["acd"] = (max(spec[0], lo), min(spec[1], hi))
    return bounds


class SurrogateModel(ModelSource):
    """A surrogate held locally: its ensemble mean (``member=None``) or one member, as explicit-Euler steps.

    The ACD is bounded to the range the training data covered (:func:`known_ranges`).
    """

    def __init__(self, surrogate: Surrogate, *, member: int | None = None, name: str = "surrogate") -> None:
        if not isinstance(surrogate, Surrogate):
            raise ValueError(f"surrogate must be an identification.surrogate.Surrogate, got {type(surrogate)}")
        self.surrogate = surrogate
        self.member = member
        self.name = name
        self.dt = surrogate.dt
        self._f = _casadi_step(surrogate, member)

    @classmethod
    def from_dir(cls, path: str | Path, *, member: int | None = None, name: str | None = None) -> SurrogateModel:
        """A surrogate read from a model directory (``identification.modelfile``)."""
        loaded = load_model(path)
        return cls(loaded.surrogate, member=member, name=name or loaded.kind)

    def dynamics(self) -> ca.Function:
        return self._f

    def input_bounds(self) -> dict[str, tuple[float, float]]:
        return _surrogate_bounds(self.surrogate)

    def describe(self) -> dict[str, Any]:
        w = self.surrogate.weights
        nz = w.nonzero()  # (M, L)
        return {
            "name": self.name,
            "kind": "surrogate",
            "dt": self.dt,
            "members": self.surrogate.n_members,
            "use": "mean" if self.member is None else f"member {self.member}",
            "nonzero_weights_per_member": float(nz.sum() / self.surrogate.n_members),
            "instructions": int(self._f.n_instructions()),
        }


def check_against_prediction(
    step: ca.Function,
    predict: Callable[[np.ndarray, np.ndarray], Any],
    *,
    member: int | None,
    rtol: float = 1e-9,
    n_states: int = 4,
    horizon: int = 3,
    seed: int = 0,
) -> float:
    """Compare a CasADi step function with the twin's ``Predict`` on the same states and inputs.

    The twin rolls every member out and averages the trajectories; the mean-derivative model equals that
    average on the first step, so with ``member=None`` one step is compared, with a member its whole rollout
    of ``horizon`` steps.

    Parameters
    ----------
    step : the CasADi model ``(x, u) -> x_next``.
    predict : ``(x0 (B, 8), u (B, H, 5)) -> twin.client.Prediction`` (with members).
    member : which member ``step`` is, or None for the ensemble mean.
    rtol : largest relative difference accepted.

    Returns
    -------
    float: the largest relative difference.

    Raises
    ------
    ModelMismatch
        A difference above ``rtol``.
    """
    rng = np.random.default_rng(seed)
    x0 = sample_initial_states(rng, n_states)  # (B, 8)
    v = np.column_stack([rng.uniform(m.low, m.high, n_states) for m in MANIPULATED])  # (B, 3) inside the spec's bounds
    current = rng.uniform(118_000.0, 155_000.0, n_states)  # (B,)
    h = 1 if member is None else horizon
    u = np.repeat(full_input(v, current)[:, None, :], h, axis=1)  # (B, H, 5)
    pred = predict(x0, u)
    if member is None:
        if pred.mean is None:
            raise ModelMismatch("the twin's prediction has no mean to compare with")
        ref = np.asarray(pred.mean)[:, 1:]  # (B, 1, 8)
    else:
        if pred.members is None:
            raise ModelMismatch("the twin's prediction has no member trajectories to compare with")
        ref = np.asarray(pred.members)[member][:, 1:]  # (B, H, 8)
    got = np.empty_like(ref)
    for b in range(n_states):
        x = x0[b]
        for k in range(h):
            x = np.asarray(step(x, u[b, k])).ravel()
            got[b, k] = x
    rel = float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1.0)))
    if not np.all(np.isfinite(got)) or not rel <= rtol:
        raise ModelMismatch(
            f"the CasADi model differs from the twin's prediction by {rel:.3g} relative (accepted: {rtol:g})"
        )
    return rel


@dataclass(frozen=True)
class _Built:
    version: int
    loaded: LoadedModel
    step: ca.Function
    mismatch: float


class TwinModel(ModelSource):
    """The surrogate the twin serves under ``alias`` of ``model``, followed as the alias moves.

    Parameters
    ----------
    client : twin.client.TwinClient
        A connected client.
    model : str
        The model's name in the twin's registry.
    alias : str
        The alias to follow (default ``"champion"``).
    member : int, optional
        Use one member instead of the ensemble mean.
    watch : bool
        Follow the alias with a background thread (otherwise the version fetched at construction stays, unless
        the caller passes the registry's events to :meth:`notice`).
    rtol : float
        Largest relative difference to the twin's ``Predict`` accepted by the check.

    Raises
    ------
    ModelMismatch
        The first version fetched does not reproduce the twin's prediction.
    grpc.RpcError
        The twin is unreachable or does not know the model.
    """

    def __init__(
        self,
        client: Any,
        model: str,
        *,
        alias: str = "champion",
        member: int | None = None,
        watch: bool = True,
        rtol: float = 1e-9,
    ) -> None:
        self.client = client
        self.model = model
        self.alias = alias
        self.member = member
        self.rtol = rtol
        self.name = f"twin:{model}@{alias}"
        self._lock = threading.Lock()
        self._pending: tuple[int, Any] | None = None  # (version, ExportedModel) fetched by the watcher
        self._revision = 0
        self.events: list[dict[str, Any]] = []  # swaps and refusals, for the report
        exported = client.export(model, alias=alias)
        self._built = self._build(exported.model.version, exported)
        self.dt = self._built.loaded.surrogate.dt
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        if watch:
            self._stream = client.watch(model)
            self._thread = threading.Thread(target=self._watch, name=f"twin-watch-{model}", daemon=True)
            self._thread.start()

    @property
    def version(self) -> int:
        return self._built.version

    @property
    def surrogate(self) -> Surrogate:
        return self._built.loaded.surrogate

    @property
    def revision(self) -> int:
        return self._revision

    def _build(self, version: int, exported: Any) -> _Built:
        loaded = exported.load()
        step = _casadi_step(loaded.surrogate, self.member)

        def predict(x0: np.ndarray, u: np.ndarray) -> Any:
            return self.client.predict(self.model, x0, u, version=version, include_members=self.member is not None)

        rel = check_against_prediction(step, predict, member=self.member, rtol=self.rtol)
        log.info(
            "model %s version %d checked against the twin's Predict (max rel. diff. %.2e)", self.model, version, rel
        )
        return _Built(version, loaded, step, rel)

    def _watch(self) -> None:
        try:
            for event in self._stream:
                if self._stop.is_set():
                    return
                self.notice(event)
        except Exception as exc:
            if not self._stop.is_set():
                log.warning("the twin's watch stream ended: %s", exc)

    def notice(self, event: Any) -> bool:
        """Take one event of the twin's registry watch (``TwinClient.watch``): when it moves the followed alias
        to another version, fetch that version for the next :meth:`refresh`. Called by this model's own watch
        thread, or, with ``watch=False``, by whoever watches the registry for many models (one stream for a
        potline host's cells). Returns True when a swap is now pending."""
        version = self._target(event)
        if version is None or version == self._built.version:
            return False
        try:
            exported = self.client.export(self.model, version=version)
        except Exception as exc:  # the twin may be restarting; the next event tries again
            log.warning("fetching %s version %d failed: %s", self.model, version, exc)
            return False
        with self._lock:
            self._pending = (version, exported)
        log.info("twin: %s@%s now points at version %d; swap pending", self.model, self.alias, version)
        return True

    def _target(self, event: Any) -> int | None:
        """The version the followed alias points at after ``event``, or None if the event does not say."""
        if event.type == "SNAPSHOT":
            for m in event.models:
                if m.name == self.model:
                    return m.aliases.get(self.alias)
            return None
        if event.type in ("ALIAS_MOVED", "ROLLED_BACK") and event.name == self.model and event.alias == self.alias:
            return event.version
        return None

    def refresh(self) -> bool:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return False
        version, exported = pending
        try:
            built = self._build(version, exported)
        except Exception as exc:
            log.error("refused version %d of %s: %s; keeping version %d", version, self.model, exc, self.version)
            self.events.append({"event": "refused", "version": version, "reason": str(exc)})
            return False
        self.events.append({"event": "swapped", "from": self._built.version, "to": version})
        log.info("swapped %s from version %d to %d", self.model, self._built.version, version)
        self._built = built
        self.dt = built.loaded.surrogate.dt
        self._revision += 1
        return True

    def pending(self) -> bool:
        """True when the watcher has fetched a version not yet swapped in."""
        with self._lock:
            return self._pending is not None

    def dynamics(self) -> ca.Function:
        return self._built.step

    def input_bounds(self) -> dict[str, tuple[float, float]]:
        return _surrogate_bounds(self._built.loaded.surrogate)

    def describe(self) -> dict[str, Any]:
        s = self._built.loaded.surrogate
        return {
            "name": self.name,
            "kind": self._built.loaded.kind,
            "version": self.version,
            "dt": self.dt,
            "members": s.n_members,
            "use": "mean" if self.member is None else f"member {self.member}",
            "nonzero_weights_per_member": float(s.weights.nonzero().sum() / s.n_members),
            "instructions": int(self._built.step.n_instructions()),
            "check_max_rel_diff": self._built.mismatch,
            "events": list(self.events),
        }

    def close(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.cancel()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


MODEL_KINDS = ("oracle", "surrogate", "twin")


def make_model(kind: str, **kwargs: Any) -> ModelSource:
    """A model source by kind (:data:`MODEL_KINDS`); ``kwargs`` go to its constructor (``surrogate`` takes
    ``path``)."""
    if kind == "oracle":
        return OracleModel(**kwargs)
    if kind == "surrogate":
        path = kwargs.pop("path")
        return SurrogateModel.from_dir(path, **kwargs)
    if kind == "twin":
        return TwinModel(**kwargs)
    raise ValueError(f"unknown model kind {kind!r}; must be one of {list(MODEL_KINDS)}")
