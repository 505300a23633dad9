"""Simulating identification data sets.

Seeds: a set is drawn from ``numpy.random.SeedSequence(seed).spawn(len(SPLITS))[SPLITS.index(split)]``, whose
three children draw the initial states, the excitation and the measurement noise. Train and test sets made
with the same ``seed`` are therefore independent, and no ``(seed, split)`` pair reproduces another's data.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import safetensors
from tqdm import tqdm

from alutwin.fileio import utc_now
from plant.datasets.fileformat import DatasetMeta, tensor_checksum, trajectory_tensors
from plant.excitation import EXCITATIONS, Exogenous, sample_initial_states
from plant.signals import N_INPUTS, N_STATES
from plant.simulator import DT, ENGINES, MeasurementNoise, Trajectories, simulate

__all__ = ["DEFAULT_ENGINE", "PUBLISHED_SIZES", "SPLITS", "ExcitationLike", "InitialStatesLike", "generate"]


SPLITS = ("train", "test", "validation")
"""Names of the sets; the index is the spawn key of the set's seed stream."""

PUBLISHED_SIZES = {"train": 40, "test": 100, "steps": 5000}
"""Sizes of the published study: 40 training and 100 test trajectories of 5000 steps."""

DEFAULT_ENGINE = "auto" if "auto" in ENGINES else "numpy"
"""Simulation engine used unless one is named: ``"auto"`` where the simulator offers it."""

_TIME_CHUNK = 250  # steps simulated per engine call (progress granularity; results do not depend on it)
_TRAJ_CHUNK = 128  # trajectories simulated together (bounds the engines' working memory)


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


ExcitationLike = str | Exogenous | Callable[[np.random.Generator, int, int], Exogenous]
"""A name of :data:`plant.excitation.EXCITATIONS`, an :class:`Exogenous` ``(N, T)``, or a callable
``(rng, n_traj, n_steps) -> Exogenous`` (drawing from the set's excitation stream)."""

InitialStatesLike = None | np.ndarray | Callable[[np.random.Generator, int], np.ndarray]
"""None (:func:`plant.excitation.sample_initial_states`), an array ``(N, 8)``, or a callable ``(rng, n) -> (n, 8)``
(drawing from the set's initial-state stream; see :func:`plant.excitation.initial_states_in`)."""


def _label(value: object, default: str) -> str:
    """The name recorded in a data set's metadata for a non-named excitation or initial-state draw."""
    name = getattr(value, "label", None) or getattr(value, "__name__", None)
    return str(name) if name and name != "<lambda>" else default


def _exogenous(excitation: ExcitationLike, rng: np.random.Generator, n_traj: int, n_steps: int) -> Exogenous:
    if isinstance(excitation, str):
        if excitation not in EXCITATIONS:
            raise ValueError(f"unknown excitation {excitation!r}; must be one of {sorted(EXCITATIONS)}")
        return EXCITATIONS[excitation](rng, n_traj, n_steps)
    exo = excitation if isinstance(excitation, Exogenous) else None
    if exo is None and callable(excitation):
        exo = excitation(rng, n_traj, n_steps)
        if not isinstance(exo, Exogenous):
            raise ValueError(f"the excitation callable returned a {type(exo).__name__}, not an Exogenous")
    if exo is None:
        raise ValueError(
            f"excitation must be a name of {sorted(EXCITATIONS)}, an Exogenous or a callable, "
            f"got {type(excitation).__name__}"
        )
    if exo.shape != (n_traj, n_steps):
        raise ValueError(f"the excitation has shape {exo.shape}; (n_traj, n_steps) = {(n_traj, n_steps)} is needed")
    return exo


def _initial_states(initial: InitialStatesLike, rng: np.random.Generator, n_traj: int) -> np.ndarray:
    if initial is None:
        return sample_initial_states(rng, n_traj)
    x0 = initial(rng, n_traj) if callable(initial) else initial
    x0 = np.asarray(x0, dtype=np.float64)
    if x0.shape != (n_traj, N_STATES):
        raise ValueError(f"initial states must have shape ({n_traj}, {N_STATES}), got {x0.shape}")
    if not np.all(np.isfinite(x0)) or np.any(x0[:, :5] < 0):
        raise ValueError("initial states must be finite, with non-negative masses")
    return x0


def generate(
    seed: int,
    n_traj: int,
    n_steps: int,
    excitation: ExcitationLike = "aprbs",
    noise: MeasurementNoise | None = None,
    engine: str = DEFAULT_ENGINE,
    progress: bool = True,
    *,
    split: str = "train",
    dt: float = DT,
    initial_states: InitialStatesLike = None,
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
    excitation : str, Exogenous or callable
        Name in :data:`plant.excitation.EXCITATIONS`, the inputs themselves (an :class:`Exogenous` of shape
        ``(n_traj, n_steps)``), or ``f(rng, n_traj, n_steps) -> Exogenous`` drawing from the set's excitation
        stream (a ``label`` attribute or the function's name is recorded); the cell's feed controllers act on
        top.
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
    initial_states : None, array or callable
        None: :func:`plant.excitation.sample_initial_states` (``plant.md``'s box); an ``(n_traj, 8)`` array; or
        ``f(rng, n) -> (n, 8)`` drawing from the set's initial-state stream (e.g.
        :func:`plant.excitation.initial_states_in` of another box).

    Returns
    -------
    (Trajectories, DatasetMeta)
        The trajectories (x (N, T+1, 8), u (N, T, 5), ...) and their metadata, checksum included.
    """
    seed = _check_int("seed", seed, 0)
    n_traj = _check_int("n_traj", n_traj, 1)
    n_steps = _check_int("n_steps", n_steps, 1)
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
    x0 = _initial_states(initial_states, init_rng, n_traj)  # (N, 8)
    exo = _exogenous(excitation, exc_rng, n_traj, n_steps)  # (N, T) each
    exc_name = excitation if isinstance(excitation, str) else _label(excitation, "custom")
    if initial_states is not None:
        exc_name += f", initial states {_label(initial_states, 'given')}"
    # disable=None: tqdm draws only on a terminal
    with tqdm(total=n_traj * n_steps, unit="step", unit_scale=True, desc=split, disable=not progress or None) as bar:
        xs, us, fault_step, fault_code = _simulate_chunked(x0, exo, dt, engine, bar)
    y = noise.apply(noise_rng, xs) if noise is not None else None  # (N, T+1, 8)
    traj = Trajectories(xs, us, fault_step, fault_code, y, dt)
    noise_txt = "no measurement noise" if noise is None else f"measurement noise std {list(noise.std)}"
    meta = DatasetMeta(
        split=split,
        seed=seed,
        excitation=exc_name,
        dt=float(dt),
        n_traj=n_traj,
        n_steps=n_steps,
        noise_std=None if noise is None else tuple(float(s) for s in noise.std),
        engine=engine,
        description=(
            f"{split} set: {n_traj} trajectories of {n_steps} steps (dt {dt:g} s) under the {exc_name!r} "
            f"excitation with the cell's feed controllers, seed {seed}, {noise_txt}"
        ),
        created=utc_now(),
        versions=_versions(),
        sha256=tensor_checksum(trajectory_tensors(traj)),
    )
    return traj, meta
