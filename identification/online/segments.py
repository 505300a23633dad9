"""One cell's samples as trajectories: segments of consecutive usable samples, the held-out split, and the
windows the evaluation rolls out over.

A sample at step ``k`` holds the state measured at ``k`` and the input applied from ``k - 1`` to ``k``, so the
training pair is ``(x_{k-1}, u_k) -> x_k``; a gap in the steps, or a sample the screen flagged, ends a segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from plant.signals import N_INPUTS, N_STATES

__all__ = [
    "Segment",
    "WindowLike",
    "check_window",
    "count_windows",
    "rollout_windows",
    "segments_from_window",
    "split_holdout",
    "step_ranges",
]


class WindowLike(Protocol):
    """What :func:`segments_from_window` reads (``twin.historian.historian.Window`` fits; read-only attributes)."""

    @property
    def cell(self) -> int: ...
    @property
    def steps(self) -> np.ndarray: ...  # (n,) int64, ascending
    @property
    def time_s(self) -> np.ndarray: ...  # (n,)
    @property
    def x(self) -> np.ndarray: ...  # (n, 8) measured state at each step
    @property
    def u(self) -> np.ndarray: ...  # (n, 5) input applied over the step that ended there


@dataclass(frozen=True)
class Segment:
    """A run of consecutive samples of one cell: ``x`` at ``steps`` and the inputs between them."""

    cell: int
    steps: np.ndarray  # (n + 1,) int64, consecutive
    x: np.ndarray  # (n + 1, 8)
    u: np.ndarray  # (n, 5): u[j] applied from steps[j] to steps[j + 1]

    def __post_init__(self) -> None:
        steps = np.asarray(self.steps, dtype=np.int64)
        x = np.asarray(self.x, dtype=np.float64)
        u = np.asarray(self.u, dtype=np.float64)
        n = steps.shape[0] - 1
        if steps.ndim != 1 or n < 0 or x.shape != (n + 1, N_STATES) or u.shape != (n, N_INPUTS):
            raise ValueError(
                f"a segment needs steps (n+1,), x (n+1, {N_STATES}) and u (n, {N_INPUTS}); "
                f"got {steps.shape}, {x.shape}, {u.shape}"
            )
        if n > 0 and np.any(np.diff(steps) != 1):
            raise ValueError("a segment's steps must be consecutive")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(u))):
            raise ValueError(f"segment of cell {self.cell} holds non-finite values")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "u", u)

    @property
    def n_steps(self) -> int:
        """Transitions in the segment."""
        return int(self.u.shape[0])

    def slice(self, start: int, stop: int) -> Segment:
        """The transitions ``[start, stop)`` (sample indices ``start .. stop``)."""
        return Segment(self.cell, self.steps[start : stop + 1], self.x[start : stop + 1], self.u[start:stop])


def check_window(window: WindowLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A window's ``steps (n,)``, ``x (n, 8)`` and ``u (n, 5)`` as arrays; ValueError naming the cell if their
    shapes disagree or the steps do not increase."""
    steps = np.asarray(window.steps, dtype=np.int64)
    x = np.asarray(window.x, dtype=np.float64)
    u = np.asarray(window.u, dtype=np.float64)
    n = steps.shape[0] if steps.ndim == 1 else -1
    if n < 0 or x.shape != (n, N_STATES) or u.shape != (n, N_INPUTS):
        raise ValueError(
            f"window of cell {window.cell} must have steps (n,), x (n, {N_STATES}), u (n, {N_INPUTS}); "
            f"got {steps.shape}, {x.shape}, {u.shape}"
        )
    if n > 1 and np.any(np.diff(steps) <= 0):
        raise ValueError(f"window of cell {window.cell}: steps must be strictly increasing")
    return steps, x, u


def segments_from_window(window: WindowLike, *, exclude: np.ndarray | None = None, min_steps: int = 1) -> list[Segment]:
    """Split one cell's samples into segments of consecutive, usable samples.

    Parameters
    ----------
    window : the cell's samples (``steps (n,)``, ``x (n, 8)``, ``u (n, 5)``).
    exclude : optional bool ``(n,)``: samples not to use (e.g. :attr:`ScreenReport.excluded`). A sample that
        is excluded, not finite, or follows a gap in the steps starts no transition.
    min_steps : shortest segment kept, in transitions.

    Returns
    -------
    The segments, oldest first.
    """
    steps, x, u = check_window(window)
    n = steps.shape[0]
    if isinstance(min_steps, bool) or not isinstance(min_steps, (int, np.integer)) or min_steps < 1:
        raise ValueError(f"min_steps must be a positive integer, got {min_steps!r}")
    usable = np.all(np.isfinite(x), axis=1) & np.all(np.isfinite(u), axis=1)  # (n,)
    if exclude is not None:
        exclude = np.asarray(exclude)
        if exclude.shape != (n,):
            raise ValueError(f"exclude must have shape ({n},), got {exclude.shape}")
        usable &= ~exclude.astype(bool)
    # transition j links sample j to j + 1: both usable and one step apart
    link = usable[:-1] & usable[1:] & (np.diff(steps) == 1) if n > 1 else np.zeros(0, dtype=bool)
    out = []
    j = 0
    while j < link.size:
        if not link[j]:
            j += 1
            continue
        k = j
        while k < link.size and link[k]:
            k += 1
        if k - j >= min_steps:  # samples j .. k, transitions j .. k-1
            out.append(Segment(int(window.cell), steps[j : k + 1], x[j : k + 1], u[j + 1 : k + 1]))
        j = k
    return out


def split_holdout(segments: Sequence[Segment], holdout_from: dict[int, int]) -> tuple[list[Segment], list[Segment]]:
    """Split segments at each cell's first held-out step: ``(training, held_out)``.

    ``holdout_from[cell]`` is the step from which that cell's samples are held out; the transition crossing it
    is in neither part, so no sample is used both to train and to judge. Cells absent from the mapping are
    training data only.
    """
    train, held = [], []
    for seg in segments:
        start = holdout_from.get(seg.cell)
        if start is None or seg.steps[-1] <= start:
            train.append(seg)
            continue
        if seg.steps[0] >= start:
            held.append(seg)
            continue
        cut = int(start - seg.steps[0])  # sample index of the first held-out step
        if cut >= 1:
            train.append(seg.slice(0, cut - 1) if cut - 1 >= 1 else seg.slice(0, 0))
        held.append(seg.slice(cut, seg.n_steps))
    return [s for s in train if s.n_steps > 0], [s for s in held if s.n_steps > 0]


def step_ranges(segments: Sequence[Segment]) -> dict[int, list[int]]:
    """Per cell (ascending), ``[first, last]``: the first and the last step its segments hold."""
    out: dict[int, list[int]] = {}
    for seg in segments:
        lo, hi = int(seg.steps[0]), int(seg.steps[-1])
        old = out.get(seg.cell)
        out[seg.cell] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]
    return dict(sorted(out.items()))


def _window_starts(seg: Segment, horizon: int, stride: int) -> range:
    """Sample indices of ``seg`` that start a rollout of ``horizon`` steps, every ``stride`` steps."""
    return range(0, seg.n_steps - horizon + 1, stride)


def count_windows(segments: Sequence[Segment], horizon: int, stride: int) -> int:
    """How many rollouts :func:`rollout_windows` gives, without building them."""
    return sum(len(_window_starts(seg, horizon, stride)) for seg in segments)


def rollout_windows(
    segments: Sequence[Segment], horizon: int, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Start points every ``stride`` steps of each segment long enough for ``horizon`` steps.

    Returns ``x_true (R, horizon + 1, 8)``, ``u (R, horizon, 5)``, cells ``(R,)``, start steps ``(R,)`` and the
    index of each rollout's segment ``(R,)``.
    """
    xs, us, cells, starts, segs = [], [], [], [], []
    for j, seg in enumerate(segments):
        for s in _window_starts(seg, horizon, stride):
            xs.append(seg.x[s : s + horizon + 1])
            us.append(seg.u[s : s + horizon])
            cells.append(seg.cell)
            starts.append(int(seg.steps[s]))
            segs.append(j)
    if not xs:
        return (
            np.zeros((0, horizon + 1, N_STATES)),
            np.zeros((0, horizon, N_INPUTS)),
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
        )
    return np.stack(xs), np.stack(us), np.array(cells), np.array(starts), np.array(segs)
