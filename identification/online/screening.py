"""Screening one cell's samples for sensor faults with the champion's one-step prediction.

A *flatline* is a state that does not change at all for ``flatline_steps`` samples while the champion expects it
to move (a real cell's measured states always move); a *level shift* is a one-step jump far outside the
champion's innovation scale that does not come back next step. A drift of the process (current efficiency,
heat transfer) changes derivatives, never the state itself from one step to the next, so it passes; a stuck or
offset sensor does not. A flagged cell is excluded from the flagged sample on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from identification.modelfile import LoadedModel
from identification.online.common import as_surrogate, check_positive
from identification.online.segments import WindowLike, check_window
from identification.surrogate import Surrogate
from plant.signals import N_STATES, STATE_NAMES

__all__ = ["ScreenConfig", "ScreenReport", "SensorFault", "screen"]


@dataclass(frozen=True)
class ScreenConfig:
    """Settings of :func:`screen`.

    Parameters
    ----------
    flatline_steps : a state that keeps exactly the same value over this many consecutive steps, while the
        champion expects it to move by at least ``jump_floor`` of its training std over them, is stuck.
    jump_sigma : a one-step innovation beyond this many robust standard deviations (of the window's own
        innovations of that state) is a jump ...
    jump_floor : ... if it also exceeds this fraction of the state's training standard deviation (so that a
        noise-free plant, whose innovations are tiny, does not flag its own model error) ...
    jump_ratio : ... and this many times the change the champion predicted for that step (a metal tap moves
        the metal pad by tens of kg in one step; a mispredicted tap is not a broken sensor).
    """

    flatline_steps: int = 12
    jump_sigma: float = 8.0
    jump_floor: float = 0.02
    jump_ratio: float = 3.0

    def __post_init__(self) -> None:
        check_positive("ScreenConfig", "flatline_steps", self.flatline_steps, integer=True)
        if self.flatline_steps < 2:
            raise ValueError(f"ScreenConfig.flatline_steps must be >= 2, got {self.flatline_steps!r}")
        check_positive("ScreenConfig", "jump_sigma", self.jump_sigma)
        check_positive("ScreenConfig", "jump_floor", self.jump_floor)
        check_positive("ScreenConfig", "jump_ratio", self.jump_ratio)


@dataclass(frozen=True)
class SensorFault:
    """A suspected sensor fault: ``kind`` is ``"flatline"`` or ``"level_shift"``."""

    cell: int
    state: str
    step: int
    kind: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"cell": self.cell, "state": self.state, "step": self.step, "kind": self.kind, "detail": self.detail}


@dataclass(frozen=True)
class ScreenReport:
    """What :func:`screen` found in one cell's window."""

    cell: int
    excluded: np.ndarray  # (n,) bool: from the first fault on
    faults: tuple[SensorFault, ...]

    @property
    def clean(self) -> bool:
        return not self.faults


def _flatline(
    x: np.ndarray, same: np.ndarray, step_pred: np.ndarray, floor: float, min_run: int, name: str
) -> tuple[int, str] | None:
    """The first run of ``min_run`` exactly repeated values of one state during which the champion expects it to
    move by at least ``floor``: ``(sample index where the run starts, detail)``, or None."""
    run, expected = 0, 0.0
    for k in range(same.shape[0]):
        if same[k]:
            run += 1
            expected += step_pred[k]
        else:
            run, expected = 0, 0.0
        if run + 1 >= min_run and abs(expected) >= floor:
            start = k + 1 - run
            return start, (
                f"{name} held exactly {x[start]:.6g} for {run + 1} samples while the champion expected it to move "
                f"by {expected:+.4g}"
            )
    return None


def _level_shift(
    r: np.ndarray, expected: np.ndarray, step_pred: np.ndarray, sigma: float, config: ScreenConfig, name: str
) -> tuple[int, str] | None:
    """The first innovation outlier of one state that is not undone at the next step: ``(sample index, detail)``,
    or None. ``r`` and ``expected`` are the innovations and the predicted changes in training stds."""
    ok = np.isfinite(r)
    if ok.sum() < 3:
        return None
    med = np.median(r[ok])
    scale = 1.4826 * np.median(np.abs(r[ok] - med))
    limit = np.maximum(max(config.jump_sigma * scale, config.jump_floor), config.jump_ratio * expected)
    for k in np.flatnonzero(ok & (np.abs(r - med) > limit)):
        nxt = r[k + 1] - med if k + 1 < r.size else np.nan
        if np.isfinite(nxt) and abs((r[k] - med) + nxt) < 0.5 * abs(r[k] - med):
            continue  # a spike that came back: noise, not a shifted sensor
        return k + 1, (
            f"{name} jumped by {(r[k] - med) * sigma:+.4g} in one step where the champion expected "
            f"{step_pred[k]:+.3g} ({abs(r[k] - med):.2g} training stds)"
        )
    return None


def screen(window: WindowLike, champion: Surrogate | LoadedModel, config: ScreenConfig | None = None) -> ScreenReport:
    """Look for stuck (flatline) and offset (level shift) sensors in one cell's window.

    The innovation of sample ``k`` is ``x_k`` minus the champion's one-step Euler prediction from ``x_{k-1}``
    under ``u_k``; it is judged per state in units of the champion's training standard deviation. A fault
    excludes the cell's samples from the fault's step on (a broken sensor does not heal by itself).
    """
    config = config or ScreenConfig()
    model = as_surrogate(champion, "champion")
    steps, x, u = check_window(window)
    n = steps.shape[0]
    excluded = np.zeros(n, dtype=bool)
    if n < 3:
        return ScreenReport(int(window.cell), excluded, ())
    sigma = model.normalization.state_std  # (8,)
    consecutive = np.diff(steps) == 1  # (n-1,)
    with np.errstate(all="ignore"):
        step_pred = model.mean().derivative(x[:-1], u[1:]) * model.dt  # (n-1, 8) predicted change of each step
        r = (x[1:] - x[:-1] - step_pred) / sigma  # (n-1, 8) innovation of sample k+1, in training stds
        expected = np.abs(step_pred) / sigma  # (n-1, 8) the predicted change, in training stds
    r = np.where(consecutive[:, None] & np.isfinite(r), r, np.nan)
    # flatlines: runs of exactly repeated values while the champion expects the state to move (a state that
    # truly stands still, e.g. AlF3 while nothing is fed, is predicted to stand still too)
    same = (np.diff(x, axis=0) == 0) & consecutive[:, None]  # (n-1, 8)
    hits = [
        (i, "flatline", _flatline(x[:, i], same[:, i], step_pred[:, i], floor, config.flatline_steps, STATE_NAMES[i]))
        for i, floor in enumerate(config.jump_floor * sigma)
    ]
    # level shifts: innovation outliers that are not undone at the next step
    hits += [
        (i, "level_shift", _level_shift(r[:, i], expected[:, i], step_pred[:, i], sigma[i], config, STATE_NAMES[i]))
        for i in range(N_STATES)
    ]
    faults: list[SensorFault] = []
    first_fault = n
    for i, kind, hit in hits:
        if hit is not None:
            at, detail = hit
            faults.append(SensorFault(int(window.cell), STATE_NAMES[i], int(steps[at]), kind, detail))
            first_fault = min(first_fault, at)
    excluded[first_fault:] = True
    faults.sort(key=lambda f: f.step)
    return ScreenReport(int(window.cell), excluded, tuple(faults))
