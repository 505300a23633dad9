"""From simulated trajectories to standardised (features, derivative targets), and the normalisation.

A sample is ``z_k = ([x_k, u_k] - mean) / std`` (13 features) with target ``((x_{k+1} - x_k) / dt - mean) / std``
(8). Samples are taken inside each trajectory only, never across the boundary between two, and stop at a
trajectory's fault (``fault_step``), so held states after a fault never enter training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from plant.signals import N_INPUTS, N_STATES

__all__ = [
    "N_FEATURES",
    "Normalization",
    "Samples",
    "TrajectoryLike",
    "Envelope",
    "fit_envelope",
    "fit_normalization",
    "make_samples",
    "valid_lengths",
]

N_FEATURES = N_STATES + N_INPUTS


class TrajectoryLike(Protocol):
    """What the pipeline reads: ``plant.simulator.Trajectories`` and ``plant.datasets.Dataset`` both fit (read-only
    attributes: frozen dataclasses fit)."""

    @property
    def x(self) -> np.ndarray: ...  # (N, T + 1, 8)
    @property
    def u(self) -> np.ndarray: ...  # (N, T, 5)
    @property
    def fault_step(self) -> np.ndarray: ...  # (N,)
    @property
    def dt(self) -> float: ...


@dataclass(frozen=True)
class Normalization:
    """Means and standard deviations of the features ``[x, u]`` (13) and of the derivative targets (8)."""

    feature_mean: np.ndarray  # (13,)
    feature_std: np.ndarray  # (13,)
    target_mean: np.ndarray  # (8,)
    target_std: np.ndarray  # (8,)
    dt: float

    def __post_init__(self) -> None:
        for name, n in (
            ("feature_mean", N_FEATURES),
            ("feature_std", N_FEATURES),
            ("target_mean", N_STATES),
            ("target_std", N_STATES),
        ):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (n,) or not np.all(np.isfinite(arr)):
                raise ValueError(f"Normalization.{name} must be {n} finite values, got shape {arr.shape}")
            if name.endswith("std") and np.any(arr <= 0):
                raise ValueError(f"Normalization.{name} must be positive, got {arr}")
            object.__setattr__(self, name, arr)
        if not (np.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f"Normalization.dt must be positive, got {self.dt!r}")

    @property
    def state_std(self) -> np.ndarray:
        """Training-set standard deviation of each state (the metric's sigma_i), (8,)."""
        return self.feature_std[:N_STATES]

    def features(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Standardised features of states ``(..., 8)`` and inputs ``(..., 5)``: ``(..., 13)``."""
        return (np.concatenate([x, u], axis=-1) - self.feature_mean) / self.feature_std

    def derivative(self, target: np.ndarray) -> np.ndarray:
        """Physical derivative (per second) from a standardised target ``(..., 8)``."""
        return target * self.target_std + self.target_mean

    def as_dict(self) -> dict[str, list[float] | float]:
        return {
            "feature_mean": self.feature_mean.tolist(),
            "feature_std": self.feature_std.tolist(),
            "target_mean": self.target_mean.tolist(),
            "target_std": self.target_std.tolist(),
            "dt": float(self.dt),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        keys = {"feature_mean", "feature_std", "target_mean", "target_std", "dt"}
        if not isinstance(d, dict) or set(d) != keys:
            raise ValueError(
                f"normalization must have exactly the keys {sorted(keys)}, got {sorted(d) if isinstance(d, dict) else type(d).__name__}"
            )
        arrays = {k: np.asarray(d[k], dtype=np.float64) for k in sorted(keys - {"dt"})}
        return cls(**arrays, dt=float(d["dt"]))


@dataclass(frozen=True)
class Envelope:
    """The training envelope: the range ``[low, high]`` of each state (8) and input (5) over a model's training
    samples. A prediction outside it is an extrapolation, however well the model fits inside."""

    x_low: np.ndarray  # (8,)
    x_high: np.ndarray  # (8,)
    u_low: np.ndarray  # (5,)
    u_high: np.ndarray  # (5,)

    def __post_init__(self) -> None:
        for name, n in (("x_low", N_STATES), ("x_high", N_STATES), ("u_low", N_INPUTS), ("u_high", N_INPUTS)):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (n,) or not np.all(np.isfinite(arr)):
                raise ValueError(f"Envelope.{name} must be {n} finite values, got shape {arr.shape}")
            object.__setattr__(self, name, arr)
        for side in ("x", "u"):
            lo, hi = getattr(self, f"{side}_low"), getattr(self, f"{side}_high")
            if np.any(lo > hi):
                raise ValueError(f"Envelope.{side}_low must not exceed {side}_high, got {lo} > {hi}")

    def as_dict(self) -> dict[str, list[float]]:
        return {k: getattr(self, k).tolist() for k in ("x_low", "x_high", "u_low", "u_high")}

    @classmethod
    def of(cls, x: np.ndarray, u: np.ndarray) -> Envelope:
        """The ranges of states ``x`` ``(S, 8)`` and inputs ``u`` ``(S, 5)``."""
        if len(x) == 0 or len(u) == 0:
            raise ValueError("no samples to take an envelope of")
        return cls(x.min(0), x.max(0), u.min(0), u.max(0))

    def union(self, other: Envelope) -> Envelope:
        """The smallest envelope holding both."""
        return Envelope(
            np.minimum(self.x_low, other.x_low),
            np.maximum(self.x_high, other.x_high),
            np.minimum(self.u_low, other.u_low),
            np.maximum(self.u_high, other.u_high),
        )

    @classmethod
    def from_dict(cls, d: dict) -> Envelope:
        keys = {"x_low", "x_high", "u_low", "u_high"}
        if not isinstance(d, dict) or set(d) != keys:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"envelope must have exactly the keys {sorted(keys)}, got {got}")
        return cls(**{k: np.asarray(d[k], dtype=np.float64) for k in keys})


@dataclass(frozen=True)
class Samples:
    """Raw one-step samples of a set of trajectories (physical units)."""

    x: np.ndarray  # (S, 8) state at step k
    u: np.ndarray  # (S, 5) input over step k
    dxdt: np.ndarray  # (S, 8) finite-difference derivative (x_{k+1} - x_k) / dt
    trajectory: np.ndarray  # (S,) index of the trajectory each sample comes from

    def __len__(self) -> int:
        return self.x.shape[0]


def valid_lengths(data: TrajectoryLike) -> np.ndarray:
    """Number of valid steps of each trajectory (up to, not including, its fault step), (N,)."""
    t = data.u.shape[1]
    fault = np.asarray(data.fault_step)
    return np.where(fault >= 0, fault, t).astype(np.int64)


def _check(data: TrajectoryLike) -> None:
    x, u = np.asarray(data.x), np.asarray(data.u)
    if (
        x.ndim != 3
        or x.shape[2] != N_STATES
        or u.ndim != 3
        or u.shape[2] != N_INPUTS
        or x.shape[:2] != (u.shape[0], u.shape[1] + 1)
    ):
        raise ValueError(
            f"trajectories must have x (N, T+1, {N_STATES}) and u (N, T, {N_INPUTS}); got {x.shape} and {u.shape}"
        )


def make_samples(data: TrajectoryLike, measured: bool = False) -> Samples:
    """All one-step samples inside each trajectory, stopping at its fault.

    With ``measured`` the noisy measurements ``data.y`` are used instead of the true states.
    """
    _check(data)
    y = getattr(data, "y", None)
    if measured and y is None:
        raise ValueError("measured=True but the data set holds no measurements (y)")
    x = np.asarray(y if measured else data.x, dtype=np.float64)
    u = np.asarray(data.u, dtype=np.float64)
    lengths = valid_lengths(data)
    parts = [(x[b, :n], u[b, :n], (x[b, 1 : n + 1] - x[b, :n]) / data.dt) for b, n in enumerate(lengths) if n > 0]
    if not parts:
        raise ValueError("the trajectories hold no valid step")
    traj = np.concatenate([np.full(n, b) for b, n in enumerate(lengths) if n > 0])
    xs, us, dxdt = (np.concatenate(p) for p in zip(*parts, strict=True))
    return Samples(xs, us, dxdt, trajectory=traj)


def fit_envelope(samples: Samples) -> Envelope:
    """The range of each state and input over ``samples`` (the states the derivatives were fitted at)."""
    return Envelope.of(samples.x, samples.u)


def fit_normalization(samples: Samples, dt: float, target_offset: np.ndarray | None = None) -> Normalization:
    """Means and stds of the training samples; ``target_offset`` (S, 8) is subtracted from the targets first
    (the physics prior of a hybrid model, whose network learns the residual)."""
    feats = np.concatenate([samples.x, samples.u], axis=1)
    target = samples.dxdt if target_offset is None else samples.dxdt - target_offset
    fstd = feats.std(axis=0)
    tstd = target.std(axis=0)
    # A constant signal (e.g. no AlF3 feed in a tiny set) must not divide by zero.
    fstd = np.where(fstd > 1e-12 * np.maximum(np.abs(feats.mean(axis=0)), 1.0), fstd, 1.0)
    tstd = np.where(tstd > 1e-15, tstd, 1.0)
    return Normalization(feats.mean(axis=0), fstd, target.mean(axis=0), tstd, dt)
