"""Test sets beyond the training excitation, built from seeds: how a surrogate fares where it will be used.

The published protocol tests on the same "aprbs" excitation it trains on. A surrogate in the twin and in the
NMPC meets other conditions; each set here is one of them, drawn with :func:`plant.datasets.generate` (an
excitation callable and an initial-state callable) from its own seed stream, and filtered to trajectories that
stay in the plant's valid domain for the whole horizon (:func:`fault_free`, the study's filter):

- ``aprbs``: the published test set (the reference, in distribution).
- ``closed-loop``: inputs as the closed loop makes them. The line current steps at random between the aprbs
  levels and holds 1 to 6 h, as in the control scenarios; the ACD moves as the NMPC may move it, inside
  [0.040, 0.060] m and at most 0.5 mm per 10-min control interval, towards targets redrawn every 0.5 to 3 h;
  alumina and AlF3 are fed as continuous rates in the NMPC's ranges (held levels, the cell's own feed
  controllers on top) instead of the training set's one-step impulses.
- ``outside-box``: initial states outside the training box (thinner and thicker ledge, leaner and richer
  bath, colder and hotter cell), under the aprbs excitation; trajectories the plant itself cannot run
  (a fault) are dropped.
- ``current-ramps``: the line current ramps linearly between levels over 0.5 to 4 h (the training set only
  steps it), ACD held levels as in aprbs, the cell's feed controllers only.

``make_test_set(name, seed, n, n_steps)`` returns the set; the same arguments give bit-identical data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from plant.datasets import generate
from plant.excitation import Exogenous, held_levels, initial_states_in
from plant.simulator import Trajectories

__all__ = ["CONTROL_INTERVAL_STEPS", "OUTSIDE_BOX", "TEST_SETS", "TestSet", "fault_free", "make_test_set"]

CONTROL_INTERVAL_STEPS = 60
"""Steps of 10 s per control interval (the NMPC's default, 10 min)."""

OUTSIDE_BOX: dict[str, list[tuple[float, float]]] = {
    "ledge_kg": [(1200.0, 2060.0), (4460.0, 5600.0)],
    "alumina_pct": [(1.5, 2.0), (5.0, 6.0)],
    "alf3_pct": [(7.0, 9.0), (13.0, 14.0)],
    "cryolite_kg": [(10_000.0, 11_500.0), (16_000.0, 17_500.0)],
    "bath_c": [(950.0, 960.0), (990.0, 1000.0)],
    "ledge_c": [(770.0, 790.0), (850.0, 870.0)],
    "wall_c": [(530.0, 555.0), (610.0, 630.0)],
}
"""Initial-state ranges just outside the training box (``plant.excitation.INITIAL_BOX``) on both sides; the
metal mass stays in the training range (tapping resets it)."""


def fault_free(traj: Trajectories, n: int | None = None) -> Trajectories:
    """The first ``n`` (None: all) trajectories that never faulted: test rollouts need the whole horizon of the
    truth. Raises ValueError when fewer than ``n`` did."""
    ok = np.flatnonzero(traj.fault_step < 0)
    if n is not None:
        if ok.size < n:
            raise ValueError(f"only {ok.size} of {traj.n_traj} test trajectories ran without a fault; {n} are needed")
        ok = ok[:n]
    y = None if traj.y is None else traj.y[ok]
    return Trajectories(traj.x[ok], traj.u[ok], traj.fault_step[ok], traj.fault_code[ok], y, traj.dt)


def _rate_limited(
    rng: np.random.Generator, n_steps: int, low: float, high: float, rate: float, hold: tuple[int, int]
) -> np.ndarray:
    """Moves towards targets uniform in [low, high], redrawn every ``hold`` steps, by at most ``rate`` per control
    interval (held within an interval)."""
    target = held_levels(rng, n_steps, low, high, hold)
    out = np.empty(n_steps)
    value = rng.uniform(low, high)
    for k0 in range(0, n_steps, CONTROL_INTERVAL_STEPS):
        value += float(np.clip(target[k0] - value, -rate, rate))
        out[k0 : k0 + CONTROL_INTERVAL_STEPS] = value
    return out


def closed_loop_inputs(rng: np.random.Generator, n_traj: int, n_steps: int) -> Exogenous:
    """The ``closed-loop`` set's excitation (see the module docstring)."""
    cur, acd, ea, ef = (np.empty((n_traj, n_steps)) for _ in range(4))
    for b in range(n_traj):
        cur[b] = 140_000.0 + held_levels(rng, n_steps, -22_000.0, 15_000.0, (360, 2160))
        acd[b] = _rate_limited(rng, n_steps, 0.040, 0.060, 0.0005, (180, 1080))
        ea[b] = held_levels(rng, n_steps, 0.0, 0.03, (60, 720))
        ef[b] = held_levels(rng, n_steps, 0.0, 0.004, (360, 2160))
    return Exogenous(cur, acd, ea, ef)


closed_loop_inputs.label = "closed-loop"  # type: ignore[attr-defined]


def current_ramps(rng: np.random.Generator, n_traj: int, n_steps: int) -> Exogenous:
    """The ``current-ramps`` set's excitation (see the module docstring)."""
    cur, acd = np.empty((n_traj, n_steps)), np.empty((n_traj, n_steps))
    for b in range(n_traj):
        level, k = rng.uniform(118_000.0, 155_000.0), 0
        while k < n_steps:
            ramp, hold = int(rng.integers(180, 1441)), int(rng.integers(100, 1101))
            nxt = rng.uniform(118_000.0, 155_000.0)
            seg = np.concatenate([level + (nxt - level) * np.arange(1, ramp + 1) / ramp, np.full(hold, nxt)])
            cur[b, k : k + seg.size] = seg[: n_steps - k]
            k += seg.size
            level = nxt
        acd[b] = 0.05 + held_levels(rng, n_steps, -0.007, 0.007, (100, 1100))
    zero = np.zeros((n_traj, n_steps))
    return Exogenous(cur, acd, zero, zero.copy())


current_ramps.label = "current-ramps"  # type: ignore[attr-defined]


def outside_box(rng: np.random.Generator, n: int) -> np.ndarray:
    """The ``outside-box`` set's initial states (:data:`OUTSIDE_BOX`)."""
    return initial_states_in(rng, n, OUTSIDE_BOX)


outside_box.label = "outside the training box"  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TestSet:
    """A named test set: its excitation and initial-state draw, and the offset of its seed."""

    description: str
    excitation: str | Callable[[np.random.Generator, int, int], Exogenous]
    initial_states: Callable[[np.random.Generator, int], np.ndarray] | None
    seed_offset: int

    __test__ = False  # not a pytest class


TEST_SETS: dict[str, TestSet] = {
    "aprbs": TestSet("the published test set: the training excitation, other seeds", "aprbs", None, 0),
    "closed-loop": TestSet("inputs as the closed loop makes them", closed_loop_inputs, None, 1),
    "outside-box": TestSet("initial states outside the training box", "aprbs", outside_box, 2),
    "current-ramps": TestSet("line-current ramps instead of steps", current_ramps, None, 3),
}
"""The test sets by name. A set's data come from ``generate(seed + 7919 * seed_offset, ..., split="test")``: the
``aprbs`` set is the study's own test set, and the others draw from streams of their own."""


def make_test_set(
    name: str, seed: int, n: int, n_steps: int, *, progress: bool = False, spare: int | None = None
) -> Trajectories:
    """``n`` fault-free trajectories of ``n_steps`` of the test set ``name`` (:data:`TEST_SETS`), drawn with
    ``seed``; ``spare`` (default ``max(10, n // 5)``, more for ``outside-box``) extra trajectories are simulated
    so that the ones that fault can be dropped."""
    if name not in TEST_SETS:
        raise ValueError(f"unknown test set {name!r}; must be one of {list(TEST_SETS)}")
    spec = TEST_SETS[name]
    extra = spare if spare is not None else max(10, n // 5) * (3 if spec.initial_states is not None else 1)
    traj, _ = generate(
        seed + 7919 * spec.seed_offset,
        n + extra,
        n_steps,
        spec.excitation,
        split="test",
        progress=progress,
        initial_states=spec.initial_states,
    )
    return fault_free(traj, n)
